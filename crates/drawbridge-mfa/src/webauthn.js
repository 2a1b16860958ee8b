// Drawbridge's WebAuthn glue: a button with data-webauthn="register" or "verify" asks
// Drawbridge for the ceremony's options, hands them to the browser in its own JSON form,
// and posts the browser's answer back; then goes where Drawbridge says.
"use strict";
(() => {
  const status = document.getElementById("webauthn-status");
  const post = async (path, body) => {
    const r = await fetch(path, {
      method: "POST",
      credentials: "same-origin",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const answer = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(answer.error || `refused (${r.status})`);
    return answer;
  };
  for (const button of document.querySelectorAll("button[data-webauthn]")) {
    button.addEventListener("click", async () => {
      const { webauthn: mode, csrf, rd } = button.dataset;
      const base = "/.drawbridge/mfa/webauthn/" + mode;
      status.textContent = "";
      button.disabled = true;
      try {
        const options = await post(base + "/options", { csrf });
        const credential =
          mode === "register"
            ? await navigator.credentials.create({
                publicKey: PublicKeyCredential.parseCreationOptionsFromJSON(options.publicKey),
              })
            : await navigator.credentials.get({
                publicKey: PublicKeyCredential.parseRequestOptionsFromJSON(options.publicKey),
              });
        const done = await post(base, { csrf, rd, credential: credential.toJSON() });
        window.location.assign(done.location);
      } catch (e) {
        status.textContent = e.message || String(e);
        button.disabled = false;
      }
    });
  }
})();
