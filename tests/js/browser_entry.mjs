// The conformance steps (steps.mjs) in a browser: the page's query string names the
// API and the tokens; the answers are POSTed, one JSON line per step, to `/results` on
// the page's own origin (the API is another origin: CORS is exercised for real).
import { run } from './steps.mjs';

const params = new URLSearchParams(window.location.search);
const lines = [];
try {
  await run(
    {
      base: params.get('base'),
      anonKey: params.get('anon'),
      userToken: params.get('token'),
      userId: params.get('user'),
      otherId: params.get('other'),
    },
    (line) => lines.push(JSON.stringify(line)),
  );
} catch (error) {
  lines.push(JSON.stringify({ step: 'exception', error: String(error) }));
}
await fetch('/results', { method: 'POST', body: lines.join('\n') });
