// fedc's browser page controller: index.html's form → a FedcClient training on local data, with
// round, loss and accuracy shown as they change. `window.fedcPage` exposes the state (used by
// the headless-browser test). URL parameters: server, token, data (URL of a .npz), autostart=1.
import { ClientError, FedcClient, Model, RuntimeDataError, loadData } from './fedc-client.js';

const $ = (id) => document.getElementById(id);
const state = { phase: 'idle', round: null, accepted: 0, skipped: 0, events: [], error: null,
  unreachable: null, // the phase to go back to once the server answers again
  trainLoss: null, localAccuracy: null, globalAccuracy: null };
window.fedcPage = state;

function show() {
  $('state').textContent = state.error ? `error: ${state.error}` : state.phase;
  $('round').textContent = state.round === null ? '–' : String(state.round);
  $('loss').textContent = state.trainLoss === null ? '–' : state.trainLoss.toFixed(4);
  $('accuracy').textContent = state.localAccuracy == null ? '–' : state.localAccuracy.toFixed(4);
  $('global-accuracy').textContent = state.globalAccuracy == null ? '–' : state.globalAccuracy.toFixed(4);
  $('accepted').textContent = String(state.accepted);
}

function log(line) {
  const el = $('log');
  el.textContent += `${new Date().toLocaleTimeString()} ${line}\n`;
  el.scrollTop = el.scrollHeight;
}

/** The server's status (null if it cannot be had), its latest model's accuracy shown. */
async function refreshGlobal(server) {
  try {
    const status = await (await fetch(`${server}/api/v1/status`)).json();
    state.globalAccuracy = status.latest.accuracy;
    return status;
  } catch (err) { /* the status is informative only */ }
  return null;
}

/** A diverged federation's tasks say "done" as a finished one's do: only the status tells. */
function diverged(status) {
  if (!status || status.status !== 'diverged') return null;
  const last = (status.rounds_history || []).filter((r) => r.outcome === 'diverged').pop();
  return `stopped: the federation diverged${last ? ` in round ${last.round}` : ''} (its aggregate had `
    + 'NaN or Inf weights); the global model is the last finite one';
}

function onEvent(server, e) {
  state.events.push(e);
  if (e.event === 'retry' && state.unreachable === null) { // shown until the server answers
    state.unreachable = state.phase;
    state.phase = `cannot reach the server (${e.reason}); retrying`;
  }
  if (e.event === 'reconnected' && state.unreachable !== null) {
    state.phase = state.unreachable;
    state.unreachable = null;
  }
  if (e.event === 'joined') { state.phase = `joined as ${e.client_id}`; state.round = e.round; }
  if (e.event === 'training') { state.phase = 'training'; state.round = e.round; }
  if (e.event === 'accepted') {
    state.phase = 'waiting for the next round';
    state.accepted += 1;
    state.trainLoss = e.train_loss;
    state.localAccuracy = e.local_accuracy;
    refreshGlobal(server).then(show);
  }
  if (e.event === 'skipped') { // e.g. too late for the round's deadline: the next round may take it
    state.skipped += 1;
    state.phase = `skipped round ${e.round} (${e.reason}); waiting for the next round`;
  }
  if (e.event === 'done') {
    state.phase = 'done';
    refreshGlobal(server).then((status) => {
      state.phase = diverged(status) || state.phase;
      show();
    });
  }
  log(`${e.event}${e.round !== undefined ? ` round ${e.round}` : ''}${e.reason ? `: ${e.reason}` : ''}`);
  show();
}

async function dataBytes() {
  const file = $('file').files[0];
  if (file) return new Uint8Array(await file.arrayBuffer());
  const url = $('demo').value || new URLSearchParams(location.search).get('data');
  if (!url) throw new ClientError('choose a data file (or a demo partition) first');
  // a bad URL or an unreachable host showed only 'TypeError: Failed to fetch', naming no file
  let where;
  try { where = new URL(url, location.href); } catch (err) {
    throw new ClientError(`the data URL ${JSON.stringify(url)} is not a valid URL`);
  }
  let res;
  try { res = await fetch(where); } catch (err) { throw new ClientError(`cannot fetch ${url}: ${err.message}`); }
  if (!res.ok) throw new ClientError(`cannot fetch ${url}: HTTP ${res.status}`);
  return new Uint8Array(await res.arrayBuffer());
}

async function start() {
  $('join').disabled = true;
  state.error = null;
  const server = ($('server').value || location.origin).replace(/\/+$/, '');
  try {
    state.phase = 'loading the model';
    show();
    const model = await Model.fetch(new URL('./', location.href));
    const { x, y, rows } = await loadData(await dataBytes(), model.manifest);
    log(`loaded ${rows} local examples`);
    const client = new FedcClient({ server, token: $('token').value.trim(), model,
      onEvent: (e) => onEvent(server, e) });
    await client.run(x, y, rows);
  } catch (err) {
    state.error = err instanceof ClientError || err instanceof RuntimeDataError ? err.message : String(err);
    log(`error: ${state.error}`);
    $('join').disabled = false;
  }
  show();
}

const params = new URLSearchParams(location.search);
if (params.get('server')) $('server').value = params.get('server');
if (params.get('token')) {
  $('token').value = params.get('token');
  // out of the address bar and the history (bookmarks, shared screens, Referer headers)
  const clean = new URL(location.href);
  clean.searchParams.delete('token');
  history.replaceState(null, '', clean);
}
$('join').addEventListener('click', start);
show();
if (params.get('autostart') === '1') start();
