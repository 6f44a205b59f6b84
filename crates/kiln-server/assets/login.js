// The sign-in page: the session cookie is `Secure`, so a browser keeps it only over HTTPS
// (or on a loopback address); say so instead of a sign-in that silently does not stick.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  if (!window.isSecureContext) document.getElementById('insecure').hidden = false;
});
