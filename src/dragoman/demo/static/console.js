// The console's billing page. It signs the user in with the console's own identity
// provider, keeps the access token in memory only, and embeds the payment widget from
// dragoman's origin. It hands the widget the token by postMessage, addressed to that origin
// only, once the widget (and nobody else) says it is ready.
const $ = (id) => document.getElementById(id);
let current = null;

async function signIn(user) {
  const answer = await fetch("/session", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ user }),
  });
  if (!answer.ok) return;
  const session = await answer.json();
  const widgetUrl = new URL(session.widget);
  current = { user, token: session.access_token, origin: widgetUrl.origin, frame: null };
  $("signed-in").hidden = false;
  $("signed-in").textContent = `Signed in as ${user}.`;
  $("widget-origin").textContent = widgetUrl.origin;
  const frame = document.createElement("iframe");
  frame.id = "widget";
  frame.title = "Payment methods";
  frame.src = widgetUrl.href;
  current.frame = frame;
  $("widget-slot").replaceChildren(frame);
  $("billing").hidden = false;
}

window.addEventListener("message", (event) => {
  if (!current || !current.frame) return;
  if (event.origin !== current.origin || event.source !== current.frame.contentWindow) return;
  if (event.data && event.data.type === "dragoman:ready") {
    current.frame.contentWindow.postMessage(
      { type: "dragoman:credential", token: current.token },
      current.origin,
    );
  }
});

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#signin button")) {
    button.onclick = () => signIn(button.dataset.user);
  }
});
