-- `jobs_node` (node, running jobs only) led the planner astray: the batched completion and
-- lease renewal (`UPDATE … FROM unnest(…) WHERE j.id = i.id … AND j.node = i.node`) walked
-- it for every batch, through the index entries of every job the node had finished since
-- the last vacuum (4,700 per batch in a 20,000-job run), instead of looking each job up by
-- its primary key. A node's running jobs (a rescue at start-up, `/admin/nodes`) are few and
-- are found through `jobs_lease`.
DROP INDEX IF EXISTS jobs_node;
