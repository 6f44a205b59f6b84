// One job: its details, payload, result, error, progress, the timeline of its states, its
// artifacts and its log (live while it runs: auto-scroll, pause, download), and cancel,
// retry and delete. Live through GET /api/v1/events and the log's own stream.
'use strict';

(() => {
  const { api, el, badge, time, confirm } = kiln;
  const $ = (id) => document.getElementById(id);
  const id = $('job').dataset.jobId;
  const role = document.body.dataset.role || 'client';
  let base = '/api/v1/jobs/' + encodeURIComponent(id);
  let owned = true; // false: an operator looking at someone else's job (admin routes)
  let job = null;
  let progressTimer = null;

  const LIVE = ['scheduled', 'queued', 'running', 'failed'];
  const TERMINAL = ['succeeded', 'dead', 'cancelled'];
  const RESULT_SHOWN = 20000; // characters of pretty JSON shown before linking the rest

  function pretty(value) {
    return JSON.stringify(value, null, 2);
  }

  function fact(name, value) {
    return [el('dt', { text: name }), el('dd', {}, value)];
  }

  function render(j) {
    job = j;
    document.title = (j.name || j.type) + ' · Kiln';
    $('job-title').textContent = (j.name || j.type) + ' ';
    $('job-title').append(el('small', { text: j.id }));
    $('job-state').replaceChildren(badge(j.state));
    const pct = Math.round((j.progress || 0) * 100);
    $('job-progress').value = pct;
    $('job-progress-text').textContent = pct + '%';
    $('job-facts').replaceChildren(
      ...fact('Type', j.type), ...fact('Queue', j.queue), ...fact('Priority', String(j.priority)),
      ...fact('Attempts', j.attempts + ' of ' + j.max_attempts),
      ...fact('Created', time(j.created_at)), ...fact('Runs at', time(j.run_at)),
      ...fact('Started', time(j.started_at)), ...fact('Finished', time(j.finished_at)),
      ...(j.cancel_requested ? fact('Cancel', 'requested, stopping') : []));
    $('job-payload').textContent = pretty(j.payload);
    $('job-error-section').hidden = !j.error;
    if (j.error) $('job-error').textContent = pretty(j.error);
    const hasResult = j.result !== null && j.result !== undefined;
    $('job-result-section').hidden = !hasResult;
    if (hasResult) {
      const text = pretty(j.result);
      $('job-result').textContent = text.length > RESULT_SHOWN ? text.slice(0, RESULT_SHOWN) + '\n…' : text;
      $('job-result-more').hidden = text.length <= RESULT_SHOWN;
      $('job-result-link').href = base + '/result';
    }
    $('job-cancel').hidden = !LIVE.includes(j.state) || j.cancel_requested;
    $('job-retry').hidden = !['failed', 'dead'].includes(j.state);
    $('job-delete').hidden = !TERMINAL.includes(j.state);
    // Progress is not an event: while the job runs, look at it every second.
    if (j.state === 'running' && progressTimer === null) {
      progressTimer = setInterval(() => reload(false), 1000);
    } else if (j.state !== 'running' && progressTimer !== null) {
      clearInterval(progressTimer);
      progressTimer = null;
    }
  }

  async function timeline() {
    if (!owned) { $('job-timeline-section').hidden = true; return; }
    let events;
    try { events = await api('GET', base + '/events?limit=1000'); } catch (_) { return; }
    $('job-timeline').replaceChildren(...events.map((e) => el('li', {},
      badge(e.state), ' ', time(e.at), ' · attempt ' + e.attempt,
      e.node ? ' · ' + e.node : '', e.message ? ' · ' + e.message : '')));
  }

  async function artifacts() {
    if (!owned || !job || !TERMINAL.includes(job.state)) return;
    let list;
    try { list = await api('GET', base + '/artifacts'); } catch (_) { return; }
    $('job-artifacts-section').hidden = list.length === 0;
    $('job-artifacts').replaceChildren(...list.map((a) => el('li', {},
      el('a', { href: a.url, download: a.name, text: a.name }),
      ' (' + a.bytes.toLocaleString() + ' bytes, ' + a.content_type + ')')));
  }

  async function reload(all) {
    try {
      render(await api('GET', base));
    } catch (e) {
      $('status').textContent = 'Could not read the job: ' + e.message;
      return;
    }
    if (all) {
      timeline();
      artifacts();
    }
  }

  // The log: every line from the start, then live ones, until the job ends.
  const logBox = $('job-log');
  let paused = false;
  let held = [];
  function append(lines) {
    logBox.append(lines.join(''));
    if (!paused) logBox.scrollTop = logBox.scrollHeight;
  }
  function followLog() {
    if (!owned) { $('job-log-section').hidden = true; return; }
    $('log-download').href = base + '/logs';
    $('log-download').setAttribute('download', 'job-' + id + '.log');
    const source = new EventSource(base + '/logs?follow=true');
    $('log-status').textContent = 'live';
    source.addEventListener('message', (m) => {
      const line = m.data + '\n';
      if (paused) held.push(line); else append([line]);
    });
    source.addEventListener('end', () => {
      source.close();
      $('log-status').textContent = 'the job has ended';
    });
    source.addEventListener('dropped', () => {
      source.close();
      $('log-status').textContent = 'too far behind: reload to see the rest';
    });
  }
  $('log-pause').addEventListener('click', () => {
    paused = !paused;
    $('log-pause').setAttribute('aria-pressed', String(paused));
    $('log-pause').textContent = paused ? 'Resume' : 'Pause';
    if (!paused && held.length) {
      append(held);
      held = [];
    }
  });

  async function act(question, verb, call) {
    if (!(await confirm(question, verb))) return;
    try {
      const after = await call();
      $('status').textContent = verb + ': done';
      if (after && after.id === id) render(after);
      return true;
    } catch (e) {
      $('status').textContent = verb + ' refused: ' + e.message;
      return false;
    }
  }
  $('job-cancel').addEventListener('click', () =>
    act('Cancel this job?', 'Cancel', () => api('POST', base + '/cancel')));
  $('job-retry').addEventListener('click', () =>
    act('Retry this job?', 'Retry', () => api('POST', base + '/retry')));
  $('job-delete').addEventListener('click', async () => {
    if (await act('Delete this job for good?', 'Delete', () => api('DELETE', base))) location.assign('/');
  });

  async function start() {
    try {
      render(await api('GET', base));
    } catch (e) {
      if (e.status === 404 && role !== 'client') {
        // An operator may look at anyone's job, through the admin routes.
        try {
          base = '/api/v1/admin/jobs/' + encodeURIComponent(id);
          owned = false;
          render(await api('GET', base));
        } catch (_) { /* not there either */ }
      }
      if (!job) {
        $('job-missing').hidden = false;
        $('job-title').textContent = 'No such job';
        return;
      }
    }
    $('job-body').hidden = false;
    timeline();
    artifacts();
    followLog();
    const events = new EventSource(owned ? '/api/v1/events' : '/api/v1/events?all=true');
    events.addEventListener('message', (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (_) { return; }
      if (ev.id !== id) return;
      // The state at once; the rest as the API has it now.
      render(Object.assign({}, job, { state: ev.state, attempts: ev.attempt }));
      reload(true);
    });
  }
  start();
})();
