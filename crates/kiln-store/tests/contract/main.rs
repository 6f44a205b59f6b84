//! The store contract suite: every [`Store`](kiln_store::Store) method, exercised only
//! through `Arc<dyn Store>`, so the same checks run against every backend.
//!
//! # Layout
//! - [`backends`]: how each backend opens a fresh, empty store. **The one place a backend is
//!   added** (see the `contract!` invocations at the bottom of this file).
//! - [`helpers`]: fixed timestamps, users, jobs and claim requests in one line.
//! - the check modules ([`users`], [`submit`], [`list`], [`claim`], [`lease`],
//!   [`client`], [`logs`], [`feed`], [`maintenance`], [`races`]): each check is an
//!   `async fn(Arc<dyn Store>)` that panics on a broken rule. A new check is added to its
//!   module and to the list in `contract!`; a change to the `Store` trait comes with a
//!   check here in the same commit, so every backend is held to it.
//!
//! The store never reads a clock, with one exception: on PostgreSQL a lease is measured by
//! the database server's clock, so that nodes whose clocks differ agree on it. Every check
//! passes explicit timestamps, and the lease checks use leases of zero or of a day, which
//! every clock agrees on; nothing sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod backends;
mod claim;
mod client;
mod feed;
mod helpers;
mod lease;
mod list;
mod logs;
mod maintenance;
mod nodes;
mod races;
mod storage;
mod submit;
mod users;

/// Expands every check into one `#[tokio::test]` inside `mod $backend`, opening a fresh store
/// with `backends::$backend::open()` and keeping its guard alive until the check ends.
macro_rules! contract {
    ($backend:ident) => {
        contract!(@tests $backend;
            users::users_insert_get_list_count,
            users::duplicate_username_is_a_conflict,
            users::user_by_name_returns_the_password_hash,
            users::user_update_patches_only_given_fields,
            users::tokens_insert_lookup_list_delete,
            users::expired_token_or_disabled_user_looks_up_as_none,
            users::a_new_password_or_role_revokes_the_users_tokens,
            users::token_prune_deletes_only_expired_tokens,
            users::token_delete_of_another_users_token_is_not_found,
            users::an_external_identity_links_to_one_user,
            users::user_limits_are_set_replaced_and_cleared,
            submit::insert_stores_the_job_and_its_first_event,
            submit::scheduled_insert_keeps_run_at_and_state,
            submit::idempotent_insert_returns_the_existing_job,
            submit::idempotency_key_with_another_hash_is_a_conflict,
            submit::idempotency_keys_are_scoped_per_owner,
            submit::max_queued_refuses_with_queue_full,
            submit::owner_max_active_refuses_only_that_owner,
            submit::other_owner_sees_not_found_everywhere,
            submit::missing_job_is_not_found,
            submit::status_is_the_light_view_and_inlines_only_small_results,
            submit::reads_of_a_finished_job_see_every_later_write,
            list::list_filters_by_state_type_queue_name_and_created_range,
            list::list_owner_scoping,
            list::every_sort_orders_and_pages_without_gaps_or_duplicates,
            list::cursor_paging_is_stable_when_jobs_are_inserted_meanwhile,
            claim::claim_skips_the_jobs_of_excluded_owners,
            claim::claim_takes_at_most_per_owner_of_one_owner_but_any_of_the_exempt,
            claim::claim_order_is_priority_then_run_at_then_id,
            claim::claim_sets_running_attempts_started_at_and_lease,
            claim::claim_skips_future_jobs_excluded_queues_and_unknown_types,
            claim::claim_finds_jobs_behind_many_unclaimable_ones,
            claim::claim_promotes_due_scheduled_and_failed_jobs,
            claim::claim_with_zero_limit_or_no_types_claims_nothing,
            claim::concurrent_claimers_claim_each_job_exactly_once,
            claim::claimers_racing_promotion_and_inserts_claim_each_job_once,
            claim::complete_and_claim_completes_then_claims_the_next_job,
            claim::a_paused_queue_is_skipped_by_claims_until_resumed,
            lease::stale_attempt_or_wrong_node_is_lease_lost_and_changes_nothing,
            lease::complete_succeeded,
            lease::complete_failed_with_retry_at_is_failed,
            lease::complete_failed_without_retry_at_is_dead,
            lease::complete_cancelled,
            lease::progress_is_fenced_and_clamped,
            lease::lease_renew_extends_and_reports_lost_and_cancel_requested,
            lease::lease_find_expired_and_by_node,
            lease::retryable_failure_after_a_cancel_request_cancels_the_job,
            lease::rescue_of_an_expired_lease_fences_out_the_old_worker,
            lease::release_queues_an_unstarted_attempt_again_in_its_place,
            lease::defer_schedules_an_attempt_again_without_spending_it,
            storage::artifact_bytes_add_up_per_owner_and_go_with_the_job,
            storage::owner_counts_are_per_state_and_per_owner,
            nodes::a_live_node_id_is_refused_and_a_dead_one_taken_over,
            nodes::every_live_node_shares_one_object_store,
            nodes::nodes_are_listed_with_their_running_jobs_and_leave_cleanly,
            nodes::rate_buckets_take_within_their_capacity,
            nodes::model_answers_are_kept_by_key,
            client::cancel_of_waiting_jobs_is_immediate,
            client::cancel_of_running_job_requests_and_signals,
            client::cancel_of_terminal_jobs_changes_nothing,
            client::cancel_of_a_running_external_job_cancels_it_at_once,
            client::retry_of_failed_and_dead_jobs,
            client::retry_gives_exactly_a_fresh_budget_of_attempts,
            client::retry_in_other_states_is_illegal,
            client::report_moves_external_jobs,
            client::report_of_illegal_move_is_illegal,
            client::report_of_non_external_job_is_a_conflict,
            client::delete_of_terminal_job_cascades,
            client::delete_of_non_terminal_job_is_a_conflict,
            client::every_transition_appends_exactly_one_event,
            client::operator_cancel_and_retry_name_the_operator_in_the_event,
            logs::log_append_and_get,
            logs::log_keeps_its_head_and_tail_around_a_skip_marker,
            logs::log_read_reports_the_job_state_and_hides_other_owners_logs,
            logs::a_single_huge_line_keeps_its_start_and_its_end,
            logs::multi_byte_text_is_cut_and_read_at_char_boundaries,
            logs::log_keeps_a_head_and_a_tail_whatever_is_appended,
            feed::feed_lists_one_owners_events_in_order_and_resumes,
            feed::feed_pages_with_a_limit,
            feed::feed_without_owner_has_everyones_events,
            feed::changed_signals_carry_the_event_the_feed_shows,
            maintenance::promote_due_and_next_due,
            maintenance::prune_by_age_and_keep_max_spares_non_terminal_jobs,
            maintenance::stats_count_jobs_per_state,
            maintenance::counts_follow_every_kind_of_change,
            maintenance::promote_and_prune_work_past_any_internal_chunk_size,
            maintenance::prune_by_age_and_count_in_one_call,
            maintenance::prune_names_the_pruned_jobs_that_had_artifacts,
            maintenance::subscribe_hears_job_available_and_changed,
            races::concurrent_idempotent_inserts_create_one_job,
            races::concurrent_inserts_respect_max_queued,
            races::concurrent_inserts_never_pass_an_owners_quota,
            races::concurrent_completions_of_one_attempt_succeed_once,
            races::claims_racing_cancels_leave_consistent_jobs,
        );
    };
    (@tests $backend:ident; $($module:ident :: $check:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
                async fn $check() {
                    let Some((store, _guard)) = crate::backends::$backend::open().await else {
                        return;
                    };
                    crate::$module::$check(store).await;
                }
            )*
        }
    };
}

// ---- backends under test (each with a module in `backends`) ----
contract!(sqlite);
contract!(postgres);
