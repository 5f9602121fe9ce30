// The console's billing page. It holds the console's access token in memory only and
// calls the payment platform exclusively through dragoman.
const state = { token: null, proxy: null, customer: null };
const $ = (id) => document.getElementById(id);

function show(answer) {
  $("last").textContent = JSON.stringify(answer, null, 2);
  $("last").className = answer.status >= 400 ? "denied" : "";
}

async function call(method, path, body) {
  const response = await fetch(state.proxy + path, {
    method,
    headers: {
      Authorization: "Bearer " + state.token,
      ...(body ? { "Content-Type": "application/json" } : {}),
    },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : null;
  show({ status: response.status, request: `${method} ${path}`, body: data });
  return { ok: response.ok, status: response.status, data };
}

const base = () => `/v1/customers/${encodeURIComponent(state.customer)}`;

async function signIn(user) {
  const session = await (await fetch("/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  })).json();
  state.token = session.access_token;
  state.proxy = session.proxy;
  const who = await call("GET", "/_dragoman/whoami");
  $("who").hidden = false;
  $("whoami").textContent = JSON.stringify(who.data, null, 2);
  state.customer = who.ok ? who.data.customer : null;
  $("methods").hidden = $("address").hidden = !who.ok;
  if (who.ok) {
    await refreshMethods();
    await loadAddress();
  }
}

async function refreshMethods() {
  const list = await call("GET", base() + "/payment-methods");
  const ul = $("method-list");
  ul.replaceChildren();
  if (!list.ok) return;
  for (const method of list.data.data) {
    const li = document.createElement("li");
    li.textContent = `${method.brand} ···· ${method.last4} (${method.exp_month}/${method.exp_year})` +
      (method.default ? " · default " : " ");
    if (!method.default) {
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
  if (!answer.ok) return;
  for (const [name, value] of Object.entries(answer.data)) {
    const input = $("address-form").elements.namedItem(name);
    if (input) input.value = value;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#signin button")) {
    button.onclick = () => signIn(button.dataset.user);
  }
  $("add-card").onsubmit = async (event) => {
    event.preventDefault();
    const form = new FormData(event.target);
    await call("POST", base() + "/payment-methods", {
      card_number: form.get("card_number"),
      exp_month: Number(form.get("exp_month")),
      exp_year: Number(form.get("exp_year")),
    });
    event.target.reset();
    await refreshMethods();
  };
  $("address-form").onsubmit = async (event) => {
    event.preventDefault();
    await call("PUT", base() + "/billing-address", Object.fromEntries(new FormData(event.target)));
  };
});
