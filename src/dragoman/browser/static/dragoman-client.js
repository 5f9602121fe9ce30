// dragoman's browser client (SEMANTICS §5), served by the proxy at /_dragoman/client.js.
//
//   import { DragomanClient } from "/_dragoman/client.js";
//   const client = new DragomanClient({ credential: () => accessToken });
//   const answer = await client.request("GET", "/v1/customers/cus_1/payment-methods");
//
// It performs the session handshake before its first call, keeps the CSRF token in memory
// only (never in storage or a readable cookie: the cookie dragoman sets is HttpOnly), and
// sends the caller's own credential and the X-CSRF-Token header on every call (dragoman
// asks a browser for the pair on reads as on writes, SEMANTICS §5). When dragoman
// answers 403 csrf_token_rotated (the token was rotated past its grace, by another tab or
// a refresh), csrf_invalid (its session is gone: ended in another tab, lost by a restart)
// or csrf_missing (the browser dropped the cookie: it expired with the session, or was
// cleared), it performs exactly one re-handshake and retries the request once; a second
// refusal is returned to the caller, never looped on. A HEAD answer has no body to name
// its code, so any 403 problem answers a HEAD the same way.

const STALE = new Set(["csrf_token_rotated", "csrf_invalid", "csrf_missing"]);

export class DragomanError extends Error {
  constructor(status, problem) {
    super(problem && problem.title ? problem.title : `dragoman answered ${status}`);
    this.status = status;
    this.problem = problem;
    this.code = problem ? problem.code : undefined;
  }
}

export class DragomanClient {
  #base;
  #credential;
  #csrf = null;
  #pending = null;

  /**
   * @param {object} options
   * @param {() => string | Promise<string>} options.credential the caller's own bearer
   *   credential (the host application's access token), asked for on every request
   * @param {string} [options.base] dragoman's origin; empty for the page's own origin
   */
  constructor({ credential, base = "" }) {
    if (typeof credential !== "function") throw new TypeError("credential must be a function");
    this.#base = base;
    this.#credential = credential;
    /** Counters, for diagnostics and tests. */
    this.stats = { handshakes: 0, refreshes: 0, retries: 0 };
  }

  /** Whether a CSRF token is held (the session handshake has been made). */
  get ready() {
    return this.#csrf !== null;
  }

  /** Makes the session (or joins this browser's live one) and keeps its token. */
  async handshake() {
    // Concurrent callers share one handshake rather than racing several.
    if (this.#pending === null) {
      this.#pending = this.#session("POST", "/_dragoman/session", false).finally(() => {
        this.#pending = null;
      });
      this.stats.handshakes += 1;
    }
    return this.#pending;
  }

  /** Rotates the session's token: T(n) stays live for the grace window, T(n-1) dies. */
  async refresh() {
    if (this.#csrf === null) return this.handshake();
    this.stats.refreshes += 1;
    return this.#session("POST", "/_dragoman/session/refresh", true);
  }

  /** Ends the session and forgets the token. */
  async logout() {
    if (this.#csrf === null) return;
    try {
      const response = await this.#send("DELETE", "/_dragoman/session", undefined, true);
      if (!response.ok && response.status !== 403) throw await problemOf(response);
    } finally {
      this.#csrf = null;
    }
  }

  /**
   * One call through dragoman. Resolves to the Response; refusals are Responses too
   * (their body is application/problem+json with a stable `code`). The first call makes
   * the session handshake; if dragoman refuses that, the call rejects with the
   * DragomanError of the handshake's problem.
   */
  async request(method, path, { body, headers } = {}) {
    method = method.toUpperCase();
    if (this.#csrf === null) await this.handshake();
    const used = this.#csrf;
    let response = await this.#send(method, path, body, true, headers);
    if (await isStale(response, method)) {
      // Our token was rotated past its grace or its session is gone: one re-handshake,
      // one retry, unless a handshake elsewhere in this page already replaced the token.
      if (this.#csrf === used) await this.handshake();
      this.stats.retries += 1;
      response = await this.#send(method, path, body, true, headers);
    }
    return response;
  }

  /** `request` for JSON APIs: the parsed body, or a DragomanError carrying the problem. */
  async json(method, path, body) {
    const response = await this.request(method, path, { body });
    if (!response.ok) throw await problemOf(response);
    if (response.status === 204) return null;
    const text = await response.text();
    return text ? JSON.parse(text) : null;
  }

  async #session(method, path, withToken) {
    const response = await this.#send(method, path, undefined, withToken);
    if (!response.ok) {
      if (method === "POST" && path.endsWith("/refresh") && (await isStale(response, method))) {
        return this.handshake();
      }
      throw await problemOf(response);
    }
    const answer = await response.json();
    this.#csrf = answer.csrf_token;
    return { expiresAt: answer.expires_at };
  }

  async #send(method, path, body, withToken, extra = {}) {
    const headers = new Headers(extra);
    headers.set("Authorization", "Bearer " + (await this.#credential()));
    if (withToken && this.#csrf !== null) headers.set("X-CSRF-Token", this.#csrf);
    let payload;
    if (body !== undefined) {
      headers.set("Content-Type", "application/json");
      payload = JSON.stringify(body);
    }
    return fetch(this.#base + path, {
      method,
      headers,
      body: payload,
      credentials: this.#base ? "include" : "same-origin",
      cache: "no-store",
      redirect: "error",
    });
  }
}

async function isStale(response, method) {
  if (response.status !== 403) return false;
  if (method === "HEAD") {
    const type = response.headers.get("Content-Type") || "";
    return type.startsWith("application/problem+json");
  }
  const problem = await problemOf(response.clone());
  return STALE.has(problem.code);
}

async function problemOf(response) {
  let problem = null;
  try {
    problem = await response.json();
  } catch {
    problem = null;
  }
  return new DragomanError(response.status, problem);
}
