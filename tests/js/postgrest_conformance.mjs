// The conformance steps (steps.mjs) from Node.js: one JSON line per step on stdout.
// Usage: node postgrest_conformance.mjs BASE ANON_KEY USER_TOKEN USER_ID OTHER_USER_ID
import { run } from './steps.mjs';

const [base, anonKey, userToken, userId, otherId] = process.argv.slice(2);
await run({ base, anonKey, userToken, userId, otherId }, (line) => {
  console.log(JSON.stringify(line));
});
