// Kiln's dashboard: what every page shares. A classic script (no modules: every file is
// served under a hashed name, which an `import` could not know). Data is put into the page
// with DOM methods and textContent only, never innerHTML.
'use strict';

const kiln = (() => {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : '';

  /** Calls the API with the session cookie (and the CSRF token on writes); resolves to the
   * parsed JSON (or null), rejects with an Error carrying the problem document. */
  async function api(method, path, body) {
    const headers = { Accept: 'application/json' };
    if (method !== 'GET') headers['X-Kiln-Csrf'] = csrf;
    const init = { method, headers, credentials: 'same-origin' };
    if (body instanceof FormData) {
      init.body = body; // multipart: the browser writes the boundary
    } else if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      location.assign('/login');
      throw new Error('signed out');
    }
    const text = await resp.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!resp.ok) {
      const err = new Error((data && data.detail) || resp.statusText || String(resp.status));
      err.problem = data;
      err.status = resp.status;
      throw err;
    }
    return data;
  }

  /** An element: `el('td', {class: 'num', text: '3'}, child, …)`. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') node.textContent = v;
      else if (k === 'class') node.className = v;
      else if (k === 'dataset') Object.assign(node.dataset, v);
      else if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
      else if (v === true) node.setAttribute(k, '');
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  /** A state as a coloured badge. */
  function badge(state) {
    return el('span', { class: 'state state-' + state, text: state });
  }

  // One formatter for every time shown: `toLocaleString` builds a new one on each call,
  // which is most of the cost of drawing a hundred rows.
  const local = new Intl.DateTimeFormat(undefined, { dateStyle: 'short', timeStyle: 'medium' });

  /** A time as the reader's local time, with the exact instant in `datetime`. */
  function time(iso) {
    if (!iso) return el('span', { text: '—' });
    return el('time', { datetime: iso, text: local.format(new Date(iso)) });
  }

  /** Asks `question` in the page's confirm dialog; resolves true on "Yes". */
  function confirm(question, yes) {
    const dialog = document.getElementById('confirm');
    document.getElementById('confirm-text').textContent = question;
    document.getElementById('confirm-ok').textContent = yes || 'Yes';
    return new Promise((resolve) => {
      dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true });
      dialog.returnValue = '';
      dialog.showModal();
    });
  }

  /** Marks the navigation link of this page. */
  function markNav() {
    for (const a of document.querySelectorAll('.top nav a')) {
      if (a.getAttribute('href') === location.pathname) a.setAttribute('aria-current', 'page');
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    markNav();
    const out = document.getElementById('logout');
    if (out) {
      out.addEventListener('click', async () => {
        try { await api('POST', '/api/v1/auth/logout'); } catch (_) { /* gone already */ }
        location.assign('/login');
      });
    }
  });

  return { api, el, badge, time, confirm };
})();
