// Operations: queues (depth, running, paused; pause and resume), nodes, and charts of the
// last hour on this node (GET /api/v1/admin/series), drawn as SVG here: no chart library.
'use strict';

(() => {
  const { api, el, time, confirm } = kiln;
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const REFRESH_MS = 5000;

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    for (const c of children) node.append(c);
    return node;
  }

  /**
   * A line chart of `lines` ({name, colour, values}) over the minutes `labels`, in the
   * figure `figure`, with a caption and a text description of the latest values for
   * those who cannot see it.
   */
  function chart(figure, caption, unit, lines) {
    const W = 360, H = 170, L = 40, R = 8, T = 12, B = 22;
    const n = Math.max(1, ...lines.map((l) => l.values.length));
    const top = Math.max(1, ...lines.flatMap((l) => l.values.filter((v) => v !== null)));
    const x = (i) => L + (i * (W - L - R)) / Math.max(1, n - 1);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const titleId = figure.id + '-title';
    const descId = figure.id + '-desc';
    const latest = lines.map((l) => {
      const v = [...l.values].reverse().find((x) => x !== null);
      return l.name + ' ' + (v === undefined ? 'none' : v + ' ' + unit);
    }).join(', ');
    const total = lines.map((l) => l.name + ' ' + l.values.reduce((a, b) => a + (b || 0), 0)).join(', ');
    const picture = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-labelledby': titleId + ' ' + descId, class: 'chart-svg' },
      svg('title', { id: titleId }, caption),
      svg('desc', { id: descId }, 'Last minute: ' + latest + '. Over the hour: ' + total + '.'),
      // Axes and the scale.
      svg('line', { x1: L, y1: T, x2: L, y2: H - B, stroke: '#767683' }),
      svg('line', { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: '#767683' }),
      svg('text', { x: L - 4, y: T + 10, 'text-anchor': 'end', 'font-size': 12, fill: '#1b1b1f' }, String(top)),
      svg('text', { x: L - 4, y: H - B, 'text-anchor': 'end', 'font-size': 12, fill: '#1b1b1f' }, '0'),
      svg('text', { x: L, y: H - 6, 'font-size': 12, fill: '#1b1b1f' }, '−60 min'),
      svg('text', { x: W - R, y: H - 6, 'text-anchor': 'end', 'font-size': 12, fill: '#1b1b1f' }, 'now'));
    for (const line of lines) {
      // A line broken where a minute has no value (no job started: no latency).
      let d = '';
      line.values.forEach((v, i) => {
        if (v === null) return;
        d += (d && line.values[i - 1] !== null ? ' L' : ' M') + x(i).toFixed(1) + ' ' + y(v).toFixed(1);
      });
      if (d) picture.append(svg('path', { d: d.trim(), fill: 'none', stroke: line.colour, 'stroke-width': 2 }));
      // A dot on a minute standing alone, which a line alone would not show.
      line.values.forEach((v, i) => {
        const alone = v !== null && (line.values[i - 1] ?? null) === null && (line.values[i + 1] ?? null) === null;
        if (alone) picture.append(svg('circle', { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2.5, fill: line.colour }));
      });
    }
    const legend = el('ul', { class: 'legend' }, ...lines.map((l) => {
      const swatch = svg('svg', { width: 14, height: 4, 'aria-hidden': 'true' }, svg('rect', { width: 14, height: 4, fill: l.colour }));
      return el('li', {}, swatch, ' ' + l.name);
    }));
    figure.replaceChildren(el('figcaption', { text: caption + ' (' + unit + ')' }), picture, legend);
  }

  async function series() {
    let s;
    try { s = await api('GET', '/api/v1/admin/series'); } catch (e) {
      $('series-node').textContent = 'No series: ' + e.message;
      return;
    }
    const m = s.minutes || [];
    if (s.node) $('series-node').textContent = 'Node ' + s.node + ': jobs its workers started and ended, per minute.';
    chart($('chart-throughput'), 'Jobs per minute', 'jobs', [
      { name: 'started', colour: '#0b57a4', values: m.map((x) => x.started) },
      { name: 'succeeded', colour: '#1d6b2c', values: m.map((x) => x.succeeded) },
    ]);
    chart($('chart-failures'), 'Failures per minute', 'jobs', [
      { name: 'failed (will retry)', colour: '#7a5200', values: m.map((x) => x.failed) },
      { name: 'dead', colour: '#a3141c', values: m.map((x) => x.dead) },
      { name: 'cancelled', colour: '#4a4a55', values: m.map((x) => x.cancelled) },
    ]);
    const lat = (k) => m.map((x) => (x.start_latency_ms ? x.start_latency_ms[k] : null));
    chart($('chart-latency'), 'Start latency', 'ms', [
      { name: 'p50', colour: '#1d6b2c', values: lat('p50') },
      { name: 'p95', colour: '#0b57a4', values: lat('p95') },
      { name: 'p99', colour: '#a3141c', values: lat('p99') },
    ]);
  }

  async function queues() {
    let list;
    try { list = await api('GET', '/api/v1/admin/queues'); } catch (e) {
      $('status').textContent = 'Could not list the queues: ' + e.message;
      return;
    }
    $('queues').tBodies[0].replaceChildren(...list.map((q) => {
      const button = el('button', { type: 'button', text: q.paused ? 'Resume' : 'Pause', 'aria-label': (q.paused ? 'Resume ' : 'Pause ') + q.name });
      button.addEventListener('click', async () => {
        const verb = q.paused ? 'Resume' : 'Pause';
        const question = q.paused ? 'Resume queue ' + q.name + '? Its jobs start again.'
          : 'Pause queue ' + q.name + '? It keeps accepting jobs, but no node starts them.';
        if (!(await confirm(question, verb))) return;
        try {
          await api('POST', '/api/v1/admin/queues/' + encodeURIComponent(q.name) + (q.paused ? '/resume' : '/pause'));
          $('status').textContent = verb + 'd ' + q.name;
        } catch (e) {
          $('status').textContent = verb + ' refused: ' + e.message;
        }
        queues();
      });
      const state = el('span', { class: 'state ' + (q.paused ? 'state-failed' : 'state-succeeded'), text: q.paused ? 'paused' : 'active' });
      if (q.paused && q.changed_by) state.title = 'by ' + q.changed_by;
      return el('tr', { dataset: { queue: q.name, paused: String(q.paused) } },
        el('th', { scope: 'row', text: q.name }), el('td', {}, state),
        el('td', { class: 'num', text: String(q.jobs.scheduled) }), el('td', { class: 'num', text: String(q.jobs.queued) }),
        el('td', { class: 'num wide', text: String(q.jobs.failed) }), el('td', { class: 'num', text: String(q.jobs.running) }),
        el('td', { class: 'wide', text: q.concurrency_limit === null || q.concurrency_limit === undefined ? '—' : String(q.concurrency_limit) }),
        el('td', {}, button));
    }));
  }

  async function nodes() {
    let list;
    try { list = await api('GET', '/api/v1/admin/nodes'); } catch (e) {
      $('status').textContent = 'Could not list the nodes: ' + e.message;
      return;
    }
    $('nodes').tBodies[0].replaceChildren(...list.map((n) => el('tr', { dataset: { node: n.id } },
      el('th', { scope: 'row', text: n.id }), el('td', { class: 'wide', text: n.host }),
      el('td', { class: 'num', text: String(n.slots) }), el('td', { class: 'num', text: String(n.running) }),
      el('td', { text: n.live ? 'yes' : 'no' }), el('td', { class: 'wide' }, time(n.heartbeat_at)),
      el('td', { class: 'wide', text: n.version }))));
  }

  function all() {
    queues();
    nodes();
    series();
  }
  all();
  setInterval(() => { if (!document.hidden) all(); }, REFRESH_MS);
})();
