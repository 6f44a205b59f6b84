// Users (admins): everyone with their role and whether they may sign in; a new user; a
// role changed or a user disabled (both end that user's sessions and tokens).
'use strict';

(() => {
  const { api, el, time, confirm } = kiln;
  const $ = (id) => document.getElementById(id);
  const ROLES = ['client', 'operator', 'admin'];

  async function patch(user, change, question) {
    if (!(await confirm(question, 'Change'))) return load();
    try {
      await api('PATCH', '/api/v1/admin/users/' + user.id, change);
      $('status').textContent = 'Changed ' + user.username;
    } catch (e) {
      $('status').textContent = 'Refused: ' + e.message;
    }
    load();
  }

  function row(u) {
    const role = el('select', { 'aria-label': 'Role of ' + u.username });
    for (const r of ROLES) role.append(el('option', { value: r, text: r }));
    role.value = u.role;
    role.addEventListener('change', () => patch(u, { role: role.value },
      'Make ' + u.username + ' ' + role.value + '? Their sessions and tokens end.'));
    const enabled = el('input', { type: 'checkbox', 'aria-label': u.username + ' may sign in' });
    enabled.checked = !u.disabled;
    enabled.addEventListener('change', () => patch(u, { disabled: !enabled.checked },
      (enabled.checked ? 'Enable ' : 'Disable ') + u.username + '?'));
    return el('tr', { dataset: { user: u.username, role: u.role, disabled: String(u.disabled) } },
      el('th', { scope: 'row', text: u.username }), el('td', {}, role), el('td', {}, enabled),
      el('td', { class: 'wide' }, time(u.created_at)));
  }

  async function load() {
    let users;
    try { users = await api('GET', '/api/v1/admin/users'); } catch (e) {
      $('status').textContent = 'Could not list the users: ' + e.message;
      return;
    }
    $('users').tBodies[0].replaceChildren(...users.map(row));
  }

  $('new-user').addEventListener('submit', async (e) => {
    e.preventDefault();
    const form = e.target;
    $('user-error').textContent = '';
    const body = { username: form.elements.username.value.trim(), password: form.elements.password.value, role: form.elements.role.value };
    try {
      const user = await api('POST', '/api/v1/admin/users', body);
      $('status').textContent = 'Created ' + user.username;
      form.reset();
      load();
    } catch (err) {
      $('user-error').textContent = err.message;
    }
  });
  load();
})();
