// Model "Try a prompt" (admin): post the form and show the plain-text reply as it streams in.
"use strict";

document.getElementById("try-form").addEventListener("submit", async function (event) {
  event.preventDefault();
  const out = document.getElementById("reply");
  out.textContent = "";
  const response = await fetch(this.action, { method: "POST", body: new FormData(this) });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    out.textContent += decoder.decode(value, { stream: true });
  }
});
