// "My jobs": the caller's jobs with filters, sort and keyset paging over GET /api/v1/jobs,
// counts per state, live changes from GET /api/v1/events (a row changes state in place; a
// new job appears at the top of a newest-first list), and bulk cancel, retry and delete.
// With `data-scope="all"` on the table ("All jobs", operators): every user's jobs through
// /api/v1/admin/jobs, `?all=true` events and the server's counts.
'use strict';

(() => {
  const { api, el, badge, time, confirm } = kiln;
  const PAGE = 100;
  const form = document.getElementById('filters');
  const tbody = document.querySelector('#jobs tbody');
  const more = document.getElementById('more');
  const empty = document.getElementById('empty');
  const status = document.getElementById('status');
  const selectAll = document.getElementById('select-all');
  const all = document.getElementById('jobs').dataset.scope === 'all';
  const jobsPath = all ? '/api/v1/admin/jobs' : '/api/v1/jobs';
  const rows = new Map(); // job id → { tr, job }
  const selected = new Set();
  let cursor = null;
  let generation = 0; // a newer load makes an older one's answer moot

  /** The filters as the list's query parameters. */
  function filters() {
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) {
      if (!v) continue;
      p.set(k, k.startsWith('created_') ? new Date(v).toISOString() : v);
    }
    return p;
  }

  function label(job) {
    return job.name || job.id.slice(0, 8) + '…' + job.id.slice(-4);
  }

  function progressCell(job) {
    const pct = Math.round((job.progress || 0) * 100);
    return el('progress', { max: '100', value: String(pct), 'aria-label': pct + '% done' });
  }

  function row(job) {
    const box = el('input', { type: 'checkbox', 'aria-label': 'Select ' + label(job) });
    box.checked = selected.has(job.id);
    box.addEventListener('change', () => {
      if (box.checked) selected.add(job.id); else selected.delete(job.id);
      updateBulk();
    });
    const tr = el('tr', { dataset: { id: job.id, state: job.state } },
      el('td', {}, box),
      el('td', {}, el('a', { href: '/jobs/' + job.id, text: label(job) })),
      el('td', { text: job.type }),
      el('td', { class: 'state-cell' }, badge(job.state)),
      el('td', { class: 'wide', text: job.queue }),
      el('td', { class: 'wide progress-cell' }, progressCell(job)),
      el('td', {}, time(job.created_at)));
    rows.set(job.id, { tr, job });
    return tr;
  }

  /** Shows `job`'s new state (and progress) in its row. */
  function patch(entry, job) {
    entry.job = job;
    entry.tr.dataset.state = job.state;
    entry.tr.querySelector('.state-cell').replaceChildren(badge(job.state));
    entry.tr.querySelector('.progress-cell').replaceChildren(progressCell(job));
  }

  async function load(reset) {
    const mine = ++generation;
    const p = filters();
    p.set('limit', String(PAGE));
    if (!reset && cursor) p.set('cursor', cursor);
    let page;
    try {
      page = await api('GET', jobsPath + '?' + p.toString());
    } catch (e) {
      status.textContent = 'Could not list the jobs: ' + e.message;
      return;
    }
    if (mine !== generation) return;
    if (reset) {
      tbody.replaceChildren();
      rows.clear();
      selected.clear();
    }
    const fragment = document.createDocumentFragment();
    for (const job of page.items) if (!rows.has(job.id)) fragment.append(row(job));
    tbody.append(fragment);
    // A User Timing mark for the benchmarks (BENCHMARKS.md): the rows are in the DOM and
    // laid out (reading a size makes the browser lay them out now rather than before the
    // next paint, which it would do anyway).
    void tbody.offsetHeight;
    performance.mark('kiln-rows');
    cursor = page.next_cursor || null;
    more.hidden = !cursor;
    empty.hidden = rows.size > 0;
    status.textContent = rows.size + ' jobs shown';
    updateBulk();
  }

  let countsTimer = null;
  async function counts() {
    countsTimer = null;
    let c;
    try {
      if (all) {
        // The server's own counts (the /metrics summary): every user's jobs.
        const m = await api('GET', '/metrics');
        const byState = {};
        for (const s of ['scheduled', 'queued', 'running', 'failed', 'succeeded', 'dead', 'cancelled']) byState[s] = m[s];
        c = { total: Object.values(byState).reduce((a, b) => a + b, 0), by_state: byState };
      } else {
        c = await api('GET', '/api/v1/jobs/counts');
      }
    } catch (_) { return; }
    const list = document.getElementById('counts');
    const items = [el('li', {}, 'all', el('b', { text: String(c.total) }))];
    for (const [state, n] of Object.entries(c.by_state)) {
      if (n > 0) items.push(el('li', { dataset: { state } }, badge(state), el('b', { text: String(n) })));
    }
    list.replaceChildren(...items);
  }
  function countsSoon() {
    if (countsTimer === null) countsTimer = setTimeout(counts, 2000);
  }

  function updateBulk() {
    for (const id of selected) if (!rows.has(id)) selected.delete(id);
    const jobs = [...selected].map((id) => rows.get(id).job);
    document.getElementById('selected').textContent = jobs.length + ' selected';
    const any = (pred) => jobs.some(pred);
    document.getElementById('bulk-cancel').disabled = !any((j) => ['scheduled', 'queued', 'running', 'failed'].includes(j.state));
    document.getElementById('bulk-retry').disabled = !any((j) => ['failed', 'dead'].includes(j.state));
    document.getElementById('bulk-delete').disabled = !any((j) => ['succeeded', 'dead', 'cancelled'].includes(j.state));
    selectAll.checked = rows.size > 0 && jobs.length === rows.size;
  }

  /** Runs `action` on every selected job it applies to, and says how it went. */
  async function bulk(verb, states, call) {
    const jobs = [...selected].map((id) => rows.get(id).job).filter((j) => states.includes(j.state));
    if (jobs.length === 0) return;
    const ok = await confirm(verb + ' ' + jobs.length + (jobs.length === 1 ? ' job?' : ' jobs?'), verb);
    if (!ok) return;
    const results = await Promise.allSettled(jobs.map(call));
    const failed = results.filter((r) => r.status === 'rejected');
    status.textContent = verb + ': ' + (jobs.length - failed.length) + ' done' +
      (failed.length ? ', ' + failed.length + ' refused (' + failed[0].reason.message + ')' : '');
    selected.clear();
    for (const { tr } of rows.values()) tr.querySelector('input[type="checkbox"]').checked = false;
    jobs.forEach((j, i) => {
      const r = results[i];
      if (r.status !== 'fulfilled' || !rows.has(j.id)) return;
      if (verb === 'Delete') {
        rows.get(j.id).tr.remove();
        rows.delete(j.id);
      } else if (r.value && r.value.id === j.id) {
        patch(rows.get(j.id), r.value); // the job as the action left it
      }
    });
    updateBulk();
    countsSoon();
  }

  // Jobs new to this page: one list request for whatever was created after the newest row
  // shown, with the page's own filters (the server applies them), at most every half
  // second however many events arrive.
  let newTimer = null;
  async function fetchNew() {
    newTimer = null;
    const p = filters();
    if ((p.get('sort') || '-created_at') !== '-created_at') return;
    let newest = null;
    for (const { job } of rows.values()) if (newest === null || job.created_at > newest) newest = job.created_at;
    if (newest !== null && !(p.has('created_after') && p.get('created_after') > newest)) p.set('created_after', newest);
    p.set('limit', String(PAGE));
    let page;
    try { page = await api('GET', jobsPath + '?' + p.toString()); } catch (_) { return; }
    for (const job of [...page.items].reverse()) if (!rows.has(job.id)) tbody.prepend(row(job));
    empty.hidden = rows.size > 0;
    updateBulk();
  }
  function newSoon() {
    if (newTimer === null) newTimer = setTimeout(fetchNew, 500);
  }

  function live() {
    const source = new EventSource(all ? '/api/v1/events?all=true' : '/api/v1/events');
    source.addEventListener('message', (m) => {
      let ev;
      try { ev = JSON.parse(m.data); } catch (_) { return; }
      const entry = rows.get(ev.id);
      if (entry) {
        // The event says all a row shows that changes (no request per event).
        patch(entry, Object.assign({}, entry.job, { state: ev.state, attempts: ev.attempt,
          progress: ev.state === 'succeeded' ? 1 : entry.job.progress }));
        updateBulk();
      } else if (!document.hidden) {
        newSoon();
      }
      countsSoon();
    });
  }

  form.addEventListener('submit', (e) => {
    e.preventDefault();
    load(true);
  });
  more.addEventListener('click', () => load(false));
  selectAll.addEventListener('change', () => {
    for (const [id, { tr }] of rows) {
      tr.querySelector('input[type="checkbox"]').checked = selectAll.checked;
      if (selectAll.checked) selected.add(id); else selected.delete(id);
    }
    updateBulk();
  });
  const post = (path) => (j) => api('POST', jobsPath + '/' + j.id + path);
  document.getElementById('bulk-cancel').addEventListener('click',
    () => bulk('Cancel', ['scheduled', 'queued', 'running', 'failed'], post('/cancel')));
  document.getElementById('bulk-retry').addEventListener('click',
    () => bulk('Retry', ['failed', 'dead'], post('/retry')));
  document.getElementById('bulk-delete').addEventListener('click',
    () => bulk('Delete', ['succeeded', 'dead', 'cancelled'], (j) => api('DELETE', jobsPath + '/' + j.id)));

  live();
  load(true);
  counts();
})();
