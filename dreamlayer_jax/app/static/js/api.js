// Talking to the server: JSON requests, errors shown in the page, this tab's client id.

export const clientId = Math.random().toString(16).slice(2, 14);

export function showMessage(text, kind = "error") {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = kind === "info" ? "info" : "";
  box.hidden = !text;
}

export function clearMessage() { showMessage(""); }

async function answer(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok) {
    const text = body && body.error ? body.error : `error: the server answered ${response.status}`;
    throw new Error(text);
  }
  return body;
}

export async function getJSON(url) {
  return answer(await fetch(url, { headers: { "x-client": clientId } }));
}

export async function postJSON(url, body) {
  return answer(await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", "x-client": clientId },
    body: JSON.stringify(body ?? {}),
  }));
}

export async function postFiles(url, field, files) {
  const form = new FormData();
  for (const file of files) form.append(field, file, file.webkitRelativePath || file.name);
  return answer(await fetch(url, { method: "POST", body: form, headers: { "x-client": clientId } }));
}

// Run `fn`; a thrown error becomes the page's message (the server said why).
export async function guarded(fn) {
  try {
    clearMessage();
    return await fn();
  } catch (err) {
    showMessage(err.message || String(err));
    return undefined;
  }
}

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children) if (child !== null && child !== undefined) node.append(child);
  return node;
}

export const COLORS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324"];
