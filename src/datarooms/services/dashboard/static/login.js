"use strict";
document.getElementById("login").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const err = document.getElementById("error");
  const button = document.getElementById("signin");
  err.hidden = true;
  button.disabled = true;
  button.textContent = "Signing in…";
  try {
    const resp = await fetch("/login", {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "x-csrf-token": document.querySelector('meta[name="csrf"]').content,
      },
      body: JSON.stringify({
        user: document.getElementById("user").value,
        password: document.getElementById("password").value,
        recovery_key: document.getElementById("recovery").value || null,
      }),
    });
    if (resp.ok) {
      window.location.assign("/");
      return;
    }
    let message = "sign-in failed (" + resp.status + ")";
    try {
      message = (await resp.json()).error || message;
    } catch (_e) { /* not JSON */ }
    err.textContent = message;
    err.hidden = false;
  } catch (_e) {
    err.textContent = "the dashboard is unreachable";
    err.hidden = false;
  } finally {
    button.disabled = false;
    button.textContent = "Sign in";
  }
});
