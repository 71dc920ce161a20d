// events.js - the live event stream (WebSocket /api/v1/events).  A browser
// cannot put an Authorization header on a WebSocket, so the token goes in
// the first text message; the server answers {"type":"hello"} once it is
// accepted.  A dropped stream reconnects with exponential back-off and
// jitter (1 s doubling to 30 s), reset after a successful hello.

const MIN_DELAY_MS = 1000;
const MAX_DELAY_MS = 30000;

export class EventStream {
  // onEvent(evt), onState(state, detail): state is "connecting", "live",
  // "retrying" (detail: seconds until the next try) or "stopped".
  constructor({ getToken, onEvent, onState }) {
    this.getToken = getToken;
    this.onEvent = onEvent;
    this.onState = onState;
    this.ws = null;
    this.delay = MIN_DELAY_MS;
    this.timer = null;
    this.stopped = true;
  }

  url() {
    const u = new URL('api/v1/events', document.baseURI);
    u.protocol = u.protocol === 'https:' ? 'wss:' : 'ws:';
    return u.toString();
  }

  start() {
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    this.timer = null;
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.onclose = null;
      ws.close(1000, 'signed out');
    }
    this.onState('stopped');
  }

  connect() {
    if (this.stopped) return;
    this.onState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (e) {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onopen = () => {
      ws.send(JSON.stringify({ token: this.getToken() }));
    };
    ws.onmessage = (m) => {
      let evt;
      try {
        evt = JSON.parse(m.data);
      } catch (e) {
        return; // Not JSON: ignore rather than break the stream.
      }
      if (evt && evt.type === 'hello') {
        this.delay = MIN_DELAY_MS;
        this.onState('live');
      }
      this.onEvent(evt);
    };
    ws.onerror = () => {
      // onclose follows and schedules the retry.
    };
    ws.onclose = () => {
      if (this.ws === ws) this.ws = null;
      this.retry();
    };
  }

  retry() {
    if (this.stopped) return;
    const wait = Math.round(this.delay * (0.75 + Math.random() * 0.5));
    this.delay = Math.min(this.delay * 2, MAX_DELAY_MS);
    this.onState('retrying', Math.ceil(wait / 1000));
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), wait);
  }
}
