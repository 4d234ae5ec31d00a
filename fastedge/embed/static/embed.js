// The embed page's script. The page is complete without it (rendered by the
// node with the reader's own state); this adds liking, flagging, blocking,
// posting without a reload, and live updates that never move what the
// reader is reading. Text from the network goes in as text; the one
// exception is a comment's "html", which the node has sanitised.
import { LiveThread } from "./live.js";

const root = document.getElementById("fe-root");
if (root) start();

function start() {
  document.documentElement.classList.remove("fe-nojs");
  const ds = root.dataset;
  const api = "/api/v1/" + encodeURIComponent(ds.tenant);
  const params = new URLSearchParams(location.search);
  const host = params.get("host");
  let viewer = parseJson(ds.viewer);
  let pageTitle = params.get("title") || "";
  const list = document.getElementById("fe-comments");
  const tpl = document.getElementById("fe-comment-template");
  const newBtn = document.getElementById("fe-new");
  const count = document.getElementById("fe-count");
  const status = document.getElementById("fe-live");
  const held = [];
  const hiddenBodies = new Map();
  const session = tabSession("fastedge:session:" + ds.tenant);

  // Sizing the iframe: tell the parent (only at the origin it said it has).
  const sendHeight = () => {
    if (!host || window.parent === window) return;
    const h = Math.ceil(document.body.getBoundingClientRect().height);
    window.parent.postMessage({ type: "fastedge:height", height: h }, host);
  };
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(sendHeight).observe(document.body);
  sendHeight();
  window.addEventListener("message", (ev) => {
    if (!host || ev.origin !== host || ev.source !== window.parent) return;
    const d = ev.data;
    if (!d || d.type !== "fastedge:host") return;
    if (typeof d.title === "string") pageTitle = d.title.slice(0, 200);
    if (typeof d.session === "string" && !viewer.authorId && !session.get()) {
      // The host page kept this tab's session (this frame may keep nothing).
      session.set(d.session.slice(0, 1000), true);
      personalise()
        .then(() => live && live.setViewer(viewer.liveToken))
        .catch((e) => console.warn("fastedge: could not read the page as this reader", e));
    }
  });

  // A browser that keeps no third-party cookie (docs/embedding.md): the
  // node hands a write made without the cookie its session in a header;
  // this tab keeps it (sessionStorage; if that is blocked too, the host
  // page's, through widget.js) and sends it back in the same header. A
  // page whose first paint already knew the reader had the cookie: nothing
  // to keep.
  function tabSession(key) {
    let memory = null;
    let store = null;
    try {
      store = window.sessionStorage;
      memory = store.getItem(key);
    } catch (e) {
      store = null; // storage blocked as well: keep it for this page's life
    }
    const toHost = (value) => {
      if (!store && host && window.parent !== window) {
        window.parent.postMessage({ type: "fastedge:session", value }, host);
      }
    };
    return {
      get: () => memory,
      set(value, fromHost) {
        if (value === memory) return;
        memory = value;
        try {
          if (store) store.setItem(key, value);
        } catch (e) {
          /* full: the page's own copy still works */
        }
        if (!fromHost) toHost(value);
      },
      clear() {
        if (memory === null && store) return;
        memory = null;
        try {
          if (store) store.removeItem(key);
        } catch (e) {
          /* nothing kept */
        }
        toHost(null);
      },
    };
  }
  function sessionHeaders() {
    const value = session.get();
    return value ? { "x-fastedge-session": value } : {};
  }
  if (viewer.authorId) session.clear();

  function parseJson(text) {
    try {
      return JSON.parse(text || "{}") || {};
    } catch (e) {
      return {};
    }
  }

  async function call(method, path, body) {
    const init = { method, credentials: "same-origin", headers: sessionHeaders() };
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const r = await fetch(api + path, init);
    const data = r.status === 204 ? {} : await r.json().catch(() => ({}));
    const carried = r.headers.get("x-fastedge-session");
    if (carried) session.set(carried);
    const code = data.error && data.error.code;
    if (code === "session_invalid" || code === "session_expired") session.clear();
    if (!r.ok) throw Object.assign(new Error((data.error && data.error.message) || "failed"), { code: data.error && data.error.code });
    if (data.viewer) setViewer(data.viewer);
    return data;
  }

  function setViewer(v) {
    viewer = v;
    if (live) live.setViewer(v.liveToken);
  }

  function idOf(li) {
    return li.id.slice(2);
  }

  function node(id) {
    return document.getElementById("c-" + id);
  }

  function fmt(ms) {
    const iso = new Date(ms).toISOString();
    return [iso.slice(0, 19) + "Z", iso.slice(0, 10) + " " + iso.slice(11, 16) + " UTC"];
  }

  function build(c) {
    const li = tpl.content.firstElementChild.cloneNode(true);
    li.id = "c-" + c.id;
    li.dataset.author = c.authorId;
    li.querySelector("article").setAttribute("aria-labelledby", "a-" + c.id);
    const a = li.querySelector(".fe-author");
    a.id = "a-" + c.id;
    a.textContent = c.displayName;
    const t = li.querySelector("time");
    const [iso, text] = fmt(c.createdAt);
    t.dateTime = iso;
    t.textContent = text;
    li.querySelector(".fe-body").innerHTML = c.html;
    li.querySelector(".fe-likes").textContent = String(c.likes);
    li.querySelector(".fe-reply").href = "?" + new URLSearchParams({ urlId: ds.urlId, replyTo: c.id }) + "#fe-form";
    if (c.authorId === viewer.authorId) {
      li.classList.add("is-mine");
      const badge = document.createElement("span");
      badge.className = "fe-badge";
      badge.textContent = "you";
      a.after(" ", badge);
    }
    return li;
  }

  function insert(c, top) {
    if (node(c.id)) return update(c);
    const li = build(c);
    const parent = c.parentId ? node(c.parentId) : null;
    if (c.parentId && !parent) return; // its parent is not on this page
    const into = parent ? parent.querySelector(".fe-replies") : list;
    if (!parent && top) into.prepend(li);
    else into.append(li);
    const empty = document.getElementById("fe-empty");
    if (empty) empty.remove();
    count.textContent = String(Number(count.textContent) + 1);
    return li;
  }

  function update(c) {
    const li = node(c.id);
    if (!li) return;
    if (!li.classList.contains("is-blocked")) li.querySelector(":scope > article > .fe-body").innerHTML = c.html;
    li.querySelector(":scope > article .fe-likes").textContent = String(c.likes);
    return li;
  }

  function showHeld() {
    newBtn.hidden = held.length === 0;
    newBtn.textContent = held.length === 1 ? "1 new comment" : held.length + " new comments";
  }

  let stale = false;
  newBtn.addEventListener("click", () => {
    if (stale) return location.reload();
    const sortTop = ds.sort !== "oldest";
    for (const c of sortTop ? held.slice().reverse() : held) insert(c, sortTop);
    held.length = 0;
    showHeld();
    if (sortTop) list.firstElementChild && list.firstElementChild.querySelector(".fe-author").focus?.();
  });

  function onEvent(kind, data) {
    if (kind === "comment.created" || kind === "comment.approved") {
      const c = data.comment;
      if (node(c.id) || held.some((h) => h.id === c.id)) return update(c);
      if (c.parentId || c.authorId === viewer.authorId) insert(c, ds.sort !== "oldest");
      else {
        held.push(c);
        showHeld();
      }
    } else if (kind === "comment.edited") {
      update(data.comment);
    } else if (kind === "comment.likes") {
      const li = node(data.commentId);
      if (li) li.querySelector(":scope > article .fe-likes").textContent = String(data.likes);
    } else if (kind === "comment.removed") {
      const li = node(data.commentId);
      if (li) {
        const body = li.querySelector(":scope > article > .fe-body");
        body.textContent = "";
        const p = document.createElement("p");
        p.className = "fe-removed-note";
        p.textContent = "This comment was removed.";
        body.append(p);
        li.querySelector(":scope > article > .fe-replies").textContent = "";
        count.textContent = String(Math.max(0, Number(count.textContent) - 1));
      }
    }
  }

  let live = null;
  function follow() {
    if (live || !ds.thread) return;
    live = new LiveThread({
      tenant: ds.tenant,
      urlId: ds.urlId,
      epoch: ds.epoch,
      seq: Number(ds.seq) || 0,
      viewer: viewer.liveToken,
      onEvent,
      onReload: () => {
        // The channel's history broke (docs/live-protocol.md): read again,
        // when the reader asks.
        stale = true;
        newBtn.textContent = "New activity: refresh comments";
        newBtn.hidden = false;
      },
      onState: (text) => {
        status.textContent = text;
      },
    });
    live.start();
  }
  if (!viewer.authorId && session.get()) {
    personalise()
      .catch((e) => console.warn("fastedge: could not read the page as this reader", e))
      .finally(follow);
  } else {
    follow();
  }

  // Actions
  root.addEventListener("click", async (ev) => {
    const btn = ev.target.closest(".fe-like, .fe-flag, .fe-block, .fe-reply");
    if (!btn) return;
    const li = btn.closest(".fe-comment");
    const id = li && idOf(li);
    const action = btn.classList[0].slice(3);
    try {
      if (action === "like") {
        const on = btn.getAttribute("aria-pressed") !== "true";
        const r = await call(on ? "POST" : "DELETE", "/comments/" + id + "/like");
        btn.setAttribute("aria-pressed", String(r.likedByMe));
        btn.querySelector(".fe-likes").textContent = String(r.likes);
      } else if (action === "flag") {
        await call("POST", "/comments/" + id + "/flag");
        btn.textContent = "Flagged";
        btn.disabled = true;
      } else if (action === "block") {
        const author = li.dataset.author;
        const blocked = li.dataset.blocked === "true";
        await call(blocked ? "DELETE" : "POST", "/blocks/" + author);
        if (blocked && !hiddenBodies.size) return location.reload();
        setBlocked(author, !blocked);
      } else if (action === "reply") {
        ev.preventDefault();
        replyTo(id, li.querySelector(".fe-author").textContent);
      }
    } catch (e) {
      showError(e);
    }
  });

  function setBlocked(author, on) {
    for (const li of list.querySelectorAll('.fe-comment[data-author="' + CSS.escape(author) + '"]')) {
      const body = li.querySelector(":scope > article > .fe-body");
      li.dataset.blocked = String(on);
      li.classList.toggle("is-blocked", on);
      li.querySelector(":scope > article > .fe-actions > .fe-block").textContent = on ? "Unblock author" : "Block author";
      if (on) {
        hiddenBodies.set(idOf(li), body.innerHTML);
        body.textContent = "";
        const p = document.createElement("p");
        p.className = "fe-blocked-note";
        p.textContent = "You blocked this author. Their comments are hidden.";
        body.append(p);
      } else if (hiddenBodies.has(idOf(li))) {
        body.innerHTML = hiddenBodies.get(idOf(li));
        hiddenBodies.delete(idOf(li));
      }
    }
  }
  function labelBlocked() {
    for (const li of list.querySelectorAll('.fe-comment[data-blocked="true"]')) {
      li.querySelector(":scope > article > .fe-actions > .fe-block").textContent = "Unblock author";
    }
  }
  labelBlocked();

  // The first paint came without the reader's state (no cookie came back)
  // but this tab holds their session: read the page again as them.
  async function personalise() {
    const r = await fetch(location.href, { credentials: "same-origin", headers: sessionHeaders() });
    const doc = new DOMParser().parseFromString(await r.text(), "text/html");
    const fresh = doc.getElementById("fe-root");
    const v = fresh ? parseJson(fresh.dataset.viewer) : {};
    if (!r.ok || !v.authorId) return session.clear();
    list.replaceChildren(...doc.getElementById("fe-comments").children);
    count.textContent = doc.getElementById("fe-count").textContent;
    for (const k of ["epoch", "seq", "thread", "viewer"]) ds[k] = fresh.dataset[k];
    const empty = document.getElementById("fe-empty");
    if (empty && list.children.length) empty.remove();
    viewer = v;
    labelBlocked();
  }

  // Posting
  const form = document.getElementById("fe-form");
  const errorBox = document.getElementById("fe-error");
  function showError(e) {
    if (!errorBox) return;
    errorBox.hidden = false;
    errorBox.textContent = e.message + (e.code ? " (" + e.code + ")" : "");
  }
  function replyTo(id, name) {
    if (!form || form.tagName !== "FORM") return;
    let parent = form.querySelector('input[name="parentId"]');
    if (!parent) {
      parent = document.createElement("input");
      parent.type = "hidden";
      parent.name = "parentId";
      form.prepend(parent);
    }
    parent.value = id;
    const text = form.querySelector("textarea");
    text.setAttribute("aria-label", "Reply to " + name);
    text.placeholder = "Reply to " + name;
    text.focus();
  }
  if (form && form.tagName === "FORM") {
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const body = { text: f.get("text"), displayName: f.get("displayName") };
      if (f.get("parentId")) body.parentId = f.get("parentId");
      if (pageTitle) body.pageTitle = pageTitle;
      const submit = form.querySelector('button[type="submit"]');
      submit.disabled = true;
      try {
        const r = await call("POST", "/comments?urlId=" + encodeURIComponent(ds.urlId), body);
        errorBox.hidden = true;
        const c = Object.assign({}, r.comment);
        if (!ds.thread) ds.thread = "new";
        insert(c, ds.sort !== "oldest");
        form.querySelector("textarea").value = "";
        const parent = form.querySelector('input[name="parentId"]');
        if (parent) parent.remove();
        follow();
      } catch (e) {
        showError(e);
      } finally {
        submit.disabled = false;
      }
    });
  }

  // "Show more": the next page's HTML from the node, with the reader's state in it.
  const more = document.getElementById("fe-more");
  if (more) {
    more.addEventListener("click", async (ev) => {
      ev.preventDefault();
      const r = await fetch(more.href, { credentials: "same-origin", headers: sessionHeaders() });
      const doc = new DOMParser().parseFromString(await r.text(), "text/html");
      for (const li of doc.querySelectorAll("#fe-comments > .fe-comment")) if (!node(idOf(li))) list.append(li);
      const next = doc.getElementById("fe-more");
      if (next) more.href = next.getAttribute("href");
      else more.parentElement.remove();
    });
  }
}
