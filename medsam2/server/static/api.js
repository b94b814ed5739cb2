// Calls to the medsam2 REST API from the page's scripts: JSON in and out; an answer with an error
// status is thrown as an Error carrying the server's one-line message (and the status, as `status`). The number of requests in
// flight is kept in document.body.dataset.pending, so tests (and scripts) can wait for quiet: a
// request counts as in flight until its body is read (hence `await response.json()` inside `try`).
// The annotation panel (/annotate/panel.js) makes its calls through this module too.

export function setPending(delta) {
  const pending = Number(document.body.dataset.pending) + delta;
  document.body.dataset.pending = String(pending);
}

export async function api(path, { method = "GET", json, body, headers = {} } = {}) {
  setPending(+1);
  try {
    const init = { method, headers: { ...headers } };
    if (json !== undefined) {
      init.body = JSON.stringify(json);
      init.headers["Content-Type"] = "application/json";
    } else if (body !== undefined) {
      init.body = body;
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch {
      // No answer at all (the browser's own words are "Failed to fetch").
      throw Object.assign(new Error("The server does not answer: it was stopped or the connection broke. Start it again (medsam2 serve) and reload the page."), { status: 0 });
    }
    if (!response.ok) {
      let message = `${response.status} ${response.statusText}`;
      try {
        message = (await response.json()).error || message;
      } catch {
        // not JSON: keep the status line
      }
      throw Object.assign(new Error(message), { status: response.status });
    }
    if (response.status === 204) return null;
    const type = response.headers.get("content-type") || "";
    return type.includes("application/json") ? await response.json() : response;
  } finally {
    setPending(-1);
  }
}
