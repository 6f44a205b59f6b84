// "Submit a job": the payload's fields are built from the chosen type's JSON Schema
// (GET /api/v1/job-types). The schema's bounds become the inputs' constraints, so the
// browser names a bad value before anything is sent; the server's problem document, if it
// still refuses, is shown next to the field it names.
'use strict';

(() => {
  const { api, el } = kiln;
  const $ = (id) => document.getElementById(id);
  const form = $('submit');
  const typeSelect = $('type');
  const fields = $('payload-fields');
  const error = $('submit-error');
  const status = $('status');
  const UUID = '[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}';
  let types = [];
  let readPayload = () => ({});

  /** A labelled field: the label, the input, its hint. */
  function field(id, text, input, hint) {
    const hintNode = hint ? el('p', { class: 'hint', id: id + '-hint', text: hint }) : null;
    if (hintNode) input.setAttribute('aria-describedby', id + '-hint');
    return el('div', { class: 'field' }, el('label', { for: id, text }), input, hintNode);
  }

  /** Lines of a textarea, without the empty last one a trailing newline makes. */
  function lines(text) {
    const all = text.split('\n');
    if (all.length && all[all.length - 1] === '') all.pop();
    return all;
  }

  /** The inputs of one property; returns a reader giving its value (undefined: left out). */
  function property(name, prop, required, into) {
    const id = 'p-' + name;
    const attrs = { id, name: 'payload.' + name, required };
    const label = name + (required ? '' : ' (optional)');
    let input;
    let read;
    if (Array.isArray(prop.enum)) {
      input = el('select', attrs);
      if (!required) input.append(el('option', { value: '', text: '—' }));
      for (const v of prop.enum) input.append(el('option', { value: String(v), text: String(v) }));
      read = () => input.value || undefined;
    } else if (prop.type === 'integer' || prop.type === 'number') {
      input = el('input', Object.assign(attrs, {
        type: 'number', min: prop.minimum, max: prop.maximum,
        step: prop.type === 'integer' ? '1' : 'any',
      }));
      read = () => (input.value === '' ? undefined : Number(input.value));
    } else if (prop.type === 'boolean') {
      input = el('input', { id, name: 'payload.' + name, type: 'checkbox' });
      read = () => input.checked;
    } else if (prop.type === 'array') {
      input = el('textarea', Object.assign(attrs, { rows: '3', required: required || prop.minItems > 0 }));
      read = () => {
        const items = lines(input.value);
        return items.length || required ? items : undefined;
      };
      prop = Object.assign({}, prop, { description: (prop.description ? prop.description + '; ' : '') + 'one per line' });
    } else if (prop.type === 'object') {
      input = el('textarea', Object.assign(attrs, { rows: '3' }));
      read = () => {
        const out = {};
        for (const line of lines(input.value)) {
          const at = line.indexOf('=');
          if (at > 0) out[line.slice(0, at)] = line.slice(at + 1);
        }
        return Object.keys(out).length ? out : undefined;
      };
      prop = Object.assign({}, prop, { description: (prop.description ? prop.description + '; ' : '') + 'NAME=value, one per line' });
    } else {
      const long = (prop.maxLength || 0) > 1000;
      input = el(long ? 'textarea' : 'input', Object.assign(attrs, {
        type: long ? undefined : 'text', rows: long ? '3' : undefined,
        minlength: prop.minLength, maxlength: prop.maxLength,
        pattern: prop.format === 'uuid' ? UUID : undefined,
      }));
      read = () => input.value || undefined;
    }
    into.append(field(id, label, input, prop.description));
    if (prop.format === 'uuid' && name.endsWith('file_id')) into.append(uploader(name, input));
    return () => [name, read()];
  }

  /** A file input that uploads the chosen file (POST /api/v1/files) and fills in its id. */
  function uploader(name, target) {
    const id = 'u-' + name;
    const file = el('input', { id, type: 'file' });
    const said = el('span', { id: id + '-status', 'aria-live': 'polite' });
    file.addEventListener('change', async () => {
      if (!file.files.length) return;
      const body = new FormData();
      body.append('file', file.files[0]);
      said.textContent = 'uploading…';
      try {
        const stored = await api('POST', '/api/v1/files', body);
        target.value = stored.id;
        said.textContent = 'uploaded: ' + stored.name + ' (' + stored.size.toLocaleString() + ' bytes)';
      } catch (e) {
        said.textContent = 'upload refused: ' + e.message;
      }
    });
    return el('div', { class: 'field' }, el('label', { for: id, text: 'or upload a file for ' + name }), file, said);
  }

  /** The fields of `schema` in `into`; returns the payload reader. */
  function build(schema, into) {
    into.replaceChildren();
    if (Array.isArray(schema.oneOf)) {
      const choice = el('select', { id: 'p-variant' });
      schema.oneOf.forEach((v, i) => choice.append(el('option', { value: String(i), text: v.title || 'form ' + (i + 1) })));
      const inner = el('div');
      into.append(field('p-variant', 'Which kind', choice), inner);
      let read = () => ({});
      const show = () => { read = build(schema.oneOf[Number(choice.value)], inner); };
      choice.addEventListener('change', show);
      show();
      return () => read();
    }
    if (!schema.properties) {
      const input = el('textarea', { id: 'p-json', name: 'payload', rows: '4' });
      input.value = '{}';
      input.addEventListener('input', () => input.setCustomValidity(''));
      into.append(field('p-json', 'Payload (JSON)', input, 'any JSON value'));
      return () => {
        try { return JSON.parse(input.value); } catch (e) {
          input.setCustomValidity('not JSON: ' + e.message);
          throw e;
        }
      };
    }
    const required = new Set(schema.required || []);
    const readers = Object.entries(schema.properties).map(([name, prop]) => property(name, prop, required.has(name), into));
    return () => {
      const payload = {};
      for (const read of readers) {
        const [name, value] = read();
        if (value !== undefined) payload[name] = value;
      }
      return payload;
    };
  }

  function chooseType() {
    const spec = types.find((t) => t.name === typeSelect.value);
    if (!spec) return;
    $('type-description').textContent = spec.description;
    readPayload = build(spec.schema, fields);
    clearErrors();
  }

  function clearErrors() {
    error.textContent = '';
    for (const bad of form.querySelectorAll('[aria-invalid="true"]')) {
      bad.removeAttribute('aria-invalid');
      bad.setCustomValidity('');
    }
    for (const note of form.querySelectorAll('.field-error')) note.remove();
  }

  /** Shows the server's problem, next to the field it names when there is one. */
  function showProblem(e) {
    const p = e.problem || {};
    error.textContent = (p.title ? p.title + ': ' : '') + (p.detail || e.message);
    const input = p.field ? form.querySelector('[name="' + CSS.escape(p.field) + '"]') : null;
    if (input) {
      input.setAttribute('aria-invalid', 'true');
      const note = el('p', { class: 'error field-error', id: input.id + '-error', text: p.detail || e.message });
      input.closest('.field').append(note);
      input.setAttribute('aria-describedby', ((input.getAttribute('aria-describedby') || '') + ' ' + note.id).trim());
      input.focus();
    }
  }

  form.addEventListener('input', (e) => {
    if (e.target.getAttribute('aria-invalid') === 'true') {
      e.target.removeAttribute('aria-invalid');
      const note = document.getElementById(e.target.id + '-error');
      if (note) note.remove();
    }
  });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    clearErrors();
    let payload;
    try { payload = readPayload(); } catch (_) { form.reportValidity(); return; }
    const body = { type: typeSelect.value, payload };
    for (const name of ['name', 'queue']) {
      const v = form.elements[name].value.trim();
      if (v) body[name] = v;
    }
    for (const name of ['priority', 'delay_ms']) {
      const v = form.elements[name].value;
      if (v !== '') body[name] = Number(v);
    }
    status.textContent = 'submitting…';
    try {
      const job = await api('POST', '/api/v1/jobs', body);
      status.replaceChildren('Submitted: ', el('a', { href: '/jobs/' + job.id, id: 'submitted', text: (job.name || job.type) + ' ' + job.id }));
    } catch (err) {
      status.textContent = '';
      showProblem(err);
    }
  });

  typeSelect.addEventListener('change', chooseType);
  api('GET', '/api/v1/job-types').then((list) => {
    types = list;
    chooseType();
  }).catch((e) => { error.textContent = 'Could not read the job types: ' + e.message; });
})();
