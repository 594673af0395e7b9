// The console's only way to the server: this origin's /v1 API with the tab's API key.
// The key lives in sessionStorage (this tab, until it closes or signs out), never in a
// cookie, so no other page or tab can make the browser send it.

const STORAGE_KEY = "ratewatch.apiKey";

export function storedKey() {
  return sessionStorage.getItem(STORAGE_KEY);
}

export function storeKey(key) {
  sessionStorage.setItem(STORAGE_KEY, key);
}

export function forgetKey() {
  sessionStorage.removeItem(STORAGE_KEY);
}

// An answer other than 2xx: `status`, and the problem details' `detail` as the message.
export class ApiError extends Error {
  constructor(status, problem) {
    const detail = problem && (problem.detail || problem.title);
    super(detail || `the server answered ${status}`);
    this.status = status;
    this.problem = problem;
  }
}

export async function api(path, { method = "GET", key = storedKey(), body } = {}) {
  const headers = { Accept: "application/json" };
  if (key) headers.Authorization = `Bearer ${key}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (error) {
    throw new ApiError(0, { detail: `the server did not answer (${error.message})` });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text.slice(0, 200) };
    }
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

// What a key may do: {admin: true|false}; ApiError(401) for a key the server refuses.
export async function whoAmI(key) {
  try {
    await api("/v1/keys", { key });
    return { admin: true };
  } catch (error) {
    if (error.status === 403) return { admin: false };
    throw error;
  }
}
