// Following one thread live (docs/live-protocol.md): WebSocket first, SSE
// when WebSocket cannot connect, reconnecting with backoff and recovering
// from the last sequence number (no gap, no duplicate). A node that drains
// sends "move" before closing: reconnect at once (with a little jitter, so
// its clients do not all arrive in the same instant), and while moving, a
// connection refused (a cached address of the drained node) is retried just
// as soon and does not count towards falling back to SSE.

const MAX_BACKOFF_MS = 30000;
const MOVE_JITTER_MS = 1000;
const MOVE_TRIES = 5;

export class LiveThread {
  // opts: tenant, urlId, epoch, seq, viewer, onEvent(kind, data), onReload(), onState(text)
  constructor(opts) {
    this.o = opts;
    this.epoch = opts.epoch || "";
    this.seq = opts.seq || 0;
    this.viewer = opts.viewer || "";
    this.failures = 0;
    this.wsFailures = 0;
    this.useSse = typeof WebSocket === "undefined";
    this.conn = null;
    this.timer = null;
    this.stopped = false;
    this.moving = false;
    this.moveTries = 0;
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.conn) this.conn.close();
    this.conn = null;
  }

  setViewer(token) {
    if (token && token !== this.viewer) {
      this.viewer = token;
      // Blocks apply per viewer: follow again as this viewer.
      if (this.conn) this.conn.close();
    }
  }

  subscribeFields() {
    const f = { tenant: this.o.tenant, urlId: this.o.urlId, since: this.seq };
    if (this.epoch) f.epoch = this.epoch;
    if (this.viewer) f.viewer = this.viewer;
    return f;
  }

  connect() {
    if (this.stopped) return;
    if (this.useSse) this.connectSse();
    else this.connectWs();
  }

  connectWs() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/live";
    let opened = false;
    const ws = new WebSocket(url);
    this.conn = ws;
    ws.onopen = () => {
      opened = true;
      ws.send(JSON.stringify(Object.assign({ type: "subscribe", ref: 1 }, this.subscribeFields())));
    };
    ws.onmessage = (ev) => this.message(ev.data);
    ws.onclose = () => {
      if (this.conn !== ws) return;
      this.conn = null;
      if (!opened && !this.moving && ++this.wsFailures >= 2) this.useSse = true;
      this.retry();
    };
  }

  connectSse() {
    const q = new URLSearchParams(this.subscribeFields());
    const es = new EventSource("/live/events?" + q.toString());
    const handle = { close: () => es.close() };
    this.conn = handle;
    es.onmessage = (ev) => this.message(ev.data);
    es.onerror = () => {
      // Reconnect ourselves, from our own position (not EventSource's).
      es.close();
      if (this.conn !== handle) return;
      this.conn = null;
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    this.o.onState("Reconnecting…");
    if (this.moving && this.moveTries++ < MOVE_TRIES) {
      // The page's host name no longer resolves to the drained node (DNS
      // withdrew it), so this reaches another node of the deployment.
      this.timer = setTimeout(() => this.connect(), Math.random() * MOVE_JITTER_MS);
      return;
    }
    this.moving = false;
    const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** Math.min(this.failures++, 6));
    this.timer = setTimeout(() => this.connect(), base / 2 + Math.random() * (base / 2));
  }

  message(raw) {
    let m;
    try {
      m = JSON.parse(raw);
    } catch (e) {
      return;
    }
    if (m.type === "subscribed") {
      this.failures = 0;
      this.moving = false;
      this.moveTries = 0;
      this.o.onState("Live");
      if (m.reload || (this.epoch && m.epoch !== this.epoch)) {
        this.epoch = m.epoch;
        this.seq = m.seq;
        this.o.onReload();
        return;
      }
      this.epoch = m.epoch;
      this.target = m.seq;
      this.pending = m.replayed || 0;
      if (!this.pending) this.seq = Math.max(this.seq, m.seq);
    } else if (m.type === "event") {
      if (m.seq <= this.seq) return;
      this.seq = m.seq;
      if (this.pending && --this.pending === 0) this.seq = Math.max(this.seq, this.target);
      this.o.onEvent(m.event, m.data);
    } else if (m.type === "reset") {
      this.epoch = m.epoch;
      this.seq = m.seq;
      this.o.onReload();
    } else if (m.type === "move") {
      // The close (1001) follows; recover on another node with since.
      this.moving = true;
      this.moveTries = 0;
    } else if (m.type === "close") {
      if (this.conn) this.conn.close();
      this.conn = null;
      this.retry();
    } else if (m.type === "error") {
      this.o.onState("Live updates unavailable (" + m.code + ")");
    }
  }
}
