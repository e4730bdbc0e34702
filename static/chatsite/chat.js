// The chat page: one websocket per conversation (see conversations/consumers.py for frames).
// Messages arrive rendered by the server's template; chunks are appended as plain text.
(function () {
  "use strict";
  const list = document.getElementById("messages");
  if (!list) return;
  const form = document.getElementById("composer");
  const input = document.getElementById("composer-input");
  const sendButton = document.getElementById("send-button");
  const stopButton = document.getElementById("stop-button");
  const errorBox = document.getElementById("chat-error");
  const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + list.dataset.socket;
  let socket = null;
  let retry = 0;
  let connectedOnce = false;
  let syncAsked = 0;  // when this page last asked the server to bring it up to date (ms)
  let unsent = "";  // a message sent but not shown back yet: a refusal (or a lost socket) puts it back in the box

  function showError(text) {
    errorBox.textContent = text;
    errorBox.hidden = !text;
  }

  function streaming() {
    return list.querySelector('[data-status="streaming"]') !== null;
  }

  function updateButtons() {
    const busy = streaming();
    const open = socket !== null && socket.readyState === WebSocket.OPEN;
    stopButton.disabled = !busy || !open;
    sendButton.disabled = busy || !open;
  }

  function scrollDown() {
    list.scrollTop = list.scrollHeight;
  }

  function addCopyButtons(root) {
    root.querySelectorAll(".code-block").forEach(function (block) {
      if (block.querySelector(".copy")) return;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      button.addEventListener("click", function () {
        navigator.clipboard.writeText(block.querySelector("code").textContent).then(function () {
          button.textContent = "Copied";
          setTimeout(function () { button.textContent = "Copy"; }, 1500);
        });
      });
      block.appendChild(button);
    });
  }

  function upsert(html) {
    const template = document.createElement("template");
    template.innerHTML = html.trim();
    const node = template.content.firstElementChild;
    const existing = document.getElementById(node.id);
    if (existing) existing.replaceWith(node);
    else list.appendChild(node);
    activate(node);
    scrollDown();
  }

  function activate(root) {
    addCopyButtons(root);
    if (window.htmx) window.htmx.process(root);
  }

  function redrawPath(html) {
    list.innerHTML = html;
    activate(list);
    scrollDown();
  }

  function send(frame) {
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showError("Not connected yet: what you wrote stays here; send it once the connection is back.");
      return false;
    }
    showError("");
    socket.send(JSON.stringify(frame));
    return true;
  }

  function startEdit(article) {
    const text = article.querySelector(".message-text");
    if (article.querySelector(".edit-box")) return;
    const box = document.createElement("form");
    box.className = "edit-box";
    const area = document.createElement("textarea");
    area.value = article.dataset.raw;
    area.rows = 3;
    area.setAttribute("aria-label", "Edited message");
    const save = document.createElement("button");
    save.type = "submit";
    save.textContent = "Send edit";
    const cancel = document.createElement("button");
    cancel.type = "button";
    cancel.className = "secondary";
    cancel.textContent = "Cancel";
    box.append(area, save, cancel);
    text.hidden = true;
    text.after(box);
    area.focus();
    cancel.addEventListener("click", function () { box.remove(); text.hidden = false; });
    box.addEventListener("submit", function (event) {
      event.preventDefault();
      if (area.value.trim() && send({ type: "edit", message_id: Number(article.dataset.messageId), content: area.value })) {
        box.remove();
        text.hidden = false;
      }
    });
  }

  list.addEventListener("click", function (event) {
    const button = event.target.closest("button");
    const article = button && button.closest(".message");
    if (!article) return;
    const id = Number(article.dataset.messageId);
    if (button.classList.contains("copy-message")) {
      navigator.clipboard.writeText(article.dataset.raw);
    } else if (button.dataset.action === "edit") {
      startEdit(article);
    } else if (button.dataset.action === "regenerate" || button.dataset.action === "continue") {
      send({ type: button.dataset.action, message_id: id });
    } else if (button.dataset.action === "alternative") {
      send({ type: "alternative", message_id: id, token: Number(button.dataset.token),
             choice: Number(button.dataset.choice) });
    }
  });

  // A reply's reasoning (what a model that thinks first writes before answering) streams into its
  // collapsed "Thinking…" block; once the answer begins, the block says how long it thought.
  function appendChunk(frame) {
    const article = document.getElementById("message-" + frame.message_id);
    if (!article) return;
    const reasoning = frame.part === "reasoning";
    const text = article.querySelector(reasoning ? ".reasoning-text" : ".message-text");
    if (!text) return;
    endStatus(article);
    trackThinking(article, reasoning);
    const have = text.textContent.length;
    // Offsets are UTF-16 positions: skip what a snapshot already showed.
    if (frame.offset + frame.text.length <= have) return;
    if (frame.offset > have) {  // text is missing before this chunk (frames lost on the way): catch up
      askSync();
      return;
    }
    text.append(frame.text.slice(have - frame.offset));
    scrollDown();
  }

  function trackThinking(article, reasoning) {
    const block = article.querySelector("details.reasoning");
    if (!block) return;
    if (reasoning) {
      block.hidden = false;
      if (!block.dataset.since) block.dataset.since = String(Date.now());
    } else if (block.dataset.since && !block.dataset.until) {
      block.dataset.until = String(Date.now());
      const seconds = (Number(block.dataset.until) - Number(block.dataset.since)) / 1000;
      block.querySelector("summary").textContent = "Thought for " + seconds.toFixed(1) + " s";
    }
  }

  // What a reply waits for before its first chunk ("loading chitchat… 3 s, loading weights") takes the
  // place of its "writing…" badge (as text: never markup) until the text starts.
  function showStatus(frame) {
    const article = document.getElementById("message-" + frame.message_id);
    const badge = article && article.querySelector(".badge.streaming");
    if (!badge || article.dataset.started) return;  // the text came first: this status is stale
    if (badge.dataset.writing === undefined) badge.dataset.writing = badge.textContent;
    badge.textContent = frame.text;
  }

  function endStatus(article) {
    article.dataset.started = "1";
    const badge = article.querySelector(".badge.streaming");
    if (!badge || badge.dataset.writing === undefined) return;
    badge.textContent = badge.dataset.writing;
    delete badge.dataset.writing;
  }

  // The active branch again and the replies being written as far as they go: after a lost
  // socket, or a gap in a reply's text. At most once every two seconds.
  function askSync() {
    if (Date.now() - syncAsked < 2000) return;
    syncAsked = Date.now();
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "sync" }));
  }

  // After a lost socket: a message sent just before it is back in the box unless the page now shows it.
  function settleUnsent() {
    if (!unsent) return;
    const questions = list.querySelectorAll(".message-user");
    const last = questions[questions.length - 1];
    if ((!last || last.dataset.raw !== unsent) && !input.value) input.value = unsent;
    unsent = "";
  }

  function setTitle(title) {
    const field = document.querySelector("#title input[name=title]");
    if (field && document.activeElement !== field) field.value = title;
    const link = document.querySelector(".conversation-list .current a");
    if (link) link.textContent = title;
    document.title = title + " · chatsite";
  }

  function onFrame(event) {
    const frame = JSON.parse(event.data);
    if (frame.type === "message" || frame.type === "done") {
      upsert(frame.html);
      unsent = "";
    } else if (frame.type === "chunk") appendChunk(frame);
    else if (frame.type === "status") showStatus(frame);
    else if (frame.type === "error") {
      showError(frame.message);
      if (unsent && !input.value) input.value = unsent;
      unsent = "";
    }
    else if (frame.type === "title") setTitle(frame.title);
    else if (frame.type === "path") {
      redrawPath(frame.html);
      settleUnsent();
    }
    updateButtons();
  }

  function connect() {
    const opened = new WebSocket(url);
    socket = opened;
    opened.addEventListener("open", function () {
      retry = 0;
      showError("");
      if (connectedOnce) {  // frames were missed while the socket was down
        syncAsked = 0;
        askSync();
      }
      connectedOnce = true;
      updateButtons();
    });
    opened.addEventListener("message", onFrame);
    opened.addEventListener("close", function (event) {
      if (socket !== opened) return;
      updateButtons();
      if (event.code === 4404) {
        showError("This conversation is not available.");
        return;
      }
      if (event.code === 4403) {
        showError("Your account may no longer chat here: its role was changed. Ask an admin.");
        return;
      }
      if (event.code === 4401) {
        showError("You have been logged out. Reload the page to log in again.");
        return;
      }
      // Backoff with jitter (0.5 s doubling to at most 10 s), so restarted servers are not stormed.
      const delay = Math.min(10000, 500 * 2 ** retry) * (0.5 + Math.random() / 2);
      retry = Math.min(retry + 1, 5);
      showError("Connection lost; reconnecting in " + Math.ceil(delay / 1000) + " s… (what you type is kept)");
      setTimeout(connect, delay);
    });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    const content = input.value;
    if (!content.trim()) return;
    const other = document.getElementById("compare-model").value;
    const current = document.querySelector("#model select");
    const frame = other && current
      ? { type: "compare", content: content, models: [current.value, other] }
      : { type: "send", content: content };
    if (send(frame)) {
      unsent = content;
      input.value = "";
    }
  });

  input.addEventListener("keydown", function (event) {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      form.requestSubmit();
    }
  });

  stopButton.addEventListener("click", function () {
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: "stop" }));
  });

  // What htmx brings in (earlier messages, another version of an answer) gets its copy buttons; a request
  // it could not do says why in the banner.
  let fromBottom = null;  // earlier messages coming in: the distance of the view from the list's end
  list.addEventListener("htmx:load", function (event) {
    addCopyButtons(event.detail.elt);
    if (fromBottom !== null) {  // earlier messages came in above: the ones being read stay where they were
      list.scrollTop = list.scrollHeight - fromBottom;
      setTimeout(function () { fromBottom = null; });
    }
  });
  list.addEventListener("htmx:beforeSwap", function (event) {
    if (event.detail.target.classList.contains("earlier")) fromBottom = list.scrollHeight - list.scrollTop;
  });
  list.addEventListener("htmx:responseError", function (event) { showError(event.detail.xhr.responseText); });

  activate(list);
  scrollDown();
  connect();
  updateButtons();
})();
