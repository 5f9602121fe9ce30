// The payment widget, served by dragoman at /_dragoman/pages/widget.html and framed by the
// host application (the console) on another origin. The widget never sees the console's
// sign-in: the console hands it the user's access token by postMessage, and every call goes
// to dragoman through the client helper (session handshake, CSRF header, one re-handshake
// when the token was rotated). Only the host that frames it may talk to it: dragoman's
// frame-ancestors policy decides who that can be, and messages from anyone else are ignored.
import { DragomanClient } from "/_dragoman/client.js";

const $ = (id) => document.getElementById(id);
const framed = window.parent !== window;
const hostOrigin = !framed
  ? null
  : location.ancestorOrigins && location.ancestorOrigins.length
    ? location.ancestorOrigins[0]
    : document.referrer
      ? new URL(document.referrer).origin
      : null;

let credential = null;
let customer = null;
const client = new DragomanClient({ credential: () => credential });
// The demo's browser tests drive rotation through this handle.
globalThis.widget = { client };

function show(answer) {
  $("last").textContent = JSON.stringify(answer, null, 2);
  $("last").className = answer.status >= 400 ? "denied" : "";
}

async function call(method, path, body) {
  const response = await client.request(method, path, { body });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  show({ status: response.status, request: `${method} ${path}`, body: data });
  return { ok: response.ok, status: response.status, data };
}

const base = () => `/v1/customers/${encodeURIComponent(customer)}`;

async function start() {
  $("status").textContent = "Connecting through dragoman…";
  try {
    await client.handshake();
  } catch (error) {
    $("status").textContent = `Session refused: ${error.code || error.message}`;
    $("status").className = "denied";
    return;
  }
  const who = await call("GET", "/_dragoman/whoami");
  if (!who.ok) {
    $("status").textContent = `Not available for this account (${who.data && who.data.code})`;
    $("status").className = "denied";
    return;
  }
  customer = who.data.customer;
  $("status").textContent = "";
  $("account-line").textContent =
    `Cloud account ${who.data.cloud_account} · billing customer ${customer}`;
  $("account").hidden = $("methods").hidden = $("address").hidden = false;
  await refreshMethods();
  await loadAddress();
  document.body.dataset.state = "ready";
}

async function refreshMethods() {
  const list = await call("GET", base() + "/payment-methods");
  const ul = $("method-list");
  ul.replaceChildren();
  if (!list.ok) return;
  for (const method of list.data.data) {
    const li = document.createElement("li");
    li.dataset.id = method.id;
    li.append(`${method.brand} ···· ${method.last4} (${method.exp_month}/${method.exp_year}) `);
    if (method.default) {
      const badge = document.createElement("span");
      badge.className = "default";
      badge.textContent = "default ";
      li.append(badge);
    } else {
      const makeDefault = document.createElement("button");
      makeDefault.textContent = "Make default";
      makeDefault.onclick = async () => {
        await call("PUT", base() + "/default-payment-method", { payment_method_id: method.id });
        await refreshMethods();
      };
      li.append(makeDefault);
    }
    const remove = document.createElement("button");
    remove.textContent = "Delete";
    remove.onclick = async () => {
      await call("DELETE", base() + "/payment-methods/" + encodeURIComponent(method.id));
      await refreshMethods();
    };
    li.append(remove);
    ul.append(li);
  }
}

async function loadAddress() {
  const answer = await call("GET", base() + "/billing-address");
  if (!answer.ok || !answer.data) return;
  for (const [name, value] of Object.entries(answer.data)) {
    const input = $("address-form").elements.namedItem(name);
    if (input) input.value = value;
  }
}

$("add-card").onsubmit = async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const added = await call("POST", base() + "/payment-methods", {
    card_number: String(form.get("card_number")).replace(/\s+/g, ""),
    exp_month: Number(form.get("exp_month")),
    exp_year: Number(form.get("exp_year")),
  });
  if (added.ok) event.target.reset();
  await refreshMethods();
};

$("address-form").onsubmit = async (event) => {
  event.preventDefault();
  await call("PUT", base() + "/billing-address", Object.fromEntries(new FormData(event.target)));
};

window.addEventListener("message", (event) => {
  if (!framed || event.source !== window.parent || event.origin !== hostOrigin) return;
  const data = event.data;
  if (!data || data.type !== "dragoman:credential" || typeof data.token !== "string") return;
  const first = credential === null;
  credential = data.token; // a later message replaces an expiring token
  if (first) start();
});

if (framed && hostOrigin) {
  window.parent.postMessage({ type: "dragoman:ready" }, hostOrigin);
} else {
  $("status").textContent = "This widget runs inside a host application.";
}
