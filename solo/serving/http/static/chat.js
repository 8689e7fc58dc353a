// The chat page of `solo serve`: talks to this server's own OpenAI API (/v1/models, /v1/chat/completions)
// and shows each answer as it streams in. When the API wants a key (a 401), the page asks for it and sends it
// as a Bearer token; it is kept in this tab's session storage only.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORAGE = "solo-api-key";
let apiKey = sessionStorage.getItem(KEY_STORAGE) || "";
let conversation = [];  // the turns so far: each question is sent with them
let streaming = null;  // the AbortController of the answer coming in, if one is

function headers() {
  const sent = {"Content-Type": "application/json"};
  if (apiKey) sent.Authorization = `Bearer ${apiKey}`;
  return sent;
}

function say(text) {
  $("status").textContent = text;
}

async function errorMessage(response) {
  try {
    return (await response.json()).error.message;
  } catch {
    return `The server answered ${response.status}.`;
  }
}

function askForKey(text) {
  $("key-form").hidden = false;
  $("api-key").focus();
  say(text);
}

async function loadModels() {
  const response = await fetch("v1/models", {headers: headers()});
  if (response.status === 401) {
    askForKey(apiKey ? "That key was refused: enter another." : "This server needs an API key.");
    return;
  }
  if (!response.ok) {
    say(await errorMessage(response));
    return;
  }
  const models = (await response.json()).data;
  $("model").replaceChildren(...models.map((model) => new Option(model.id, model.id)));
  $("model").disabled = false;
  $("key-form").hidden = true;
  say("");
  $("prompt").focus();
}

function addMessage(role, text) {
  const message = document.createElement("div");
  message.className = `message ${role}`;
  message.textContent = text;
  $("messages").append(message);
  message.scrollIntoView({block: "end"});
  return message;
}

// The payloads of a server-sent event stream: `data: …` blocks, each ended by a blank line, the last `[DONE]`.
async function* events(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    for (let end = buffer.indexOf("\n\n"); end >= 0; end = buffer.indexOf("\n\n")) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      if (!block.startsWith("data: ")) continue;
      if (block === "data: [DONE]") return;
      yield JSON.parse(block.slice("data: ".length));
    }
  }
}

async function ask(question) {
  const turns = conversation;  // "New chat" starts another while this answer may still be coming in
  turns.push({role: "user", content: question});
  addMessage("user", question);
  const answer = addMessage("assistant", "");
  answer.dataset.state = "streaming";
  const controller = new AbortController();
  streaming = controller;
  $("send").textContent = "Stop";
  try {
    const response = await fetch("v1/chat/completions", {
      method: "POST", headers: headers(), signal: controller.signal,
      body: JSON.stringify({model: $("model").value, messages: turns, stream: true}),
    });
    if (response.status === 401) askForKey("The server wants an API key.");
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const event of events(response.body)) {
      if (event.error) throw new Error(event.error.message);
      const text = event.choices[0]?.delta?.content;
      if (text) {
        answer.textContent += text;
        answer.scrollIntoView({block: "end"});
      }
    }
    answer.dataset.state = "done";
  } catch (error) {
    answer.dataset.state = controller.signal.aborted ? "stopped" : "failed";
    if (!controller.signal.aborted) addMessage("error", error.message);
  } finally {
    // A question without an answer is taken back, so that the next one is not asked after it.
    if (answer.textContent) turns.push({role: "assistant", content: answer.textContent});
    else turns.pop();
    streaming = null;
    $("send").textContent = "Send";
  }
}

$("ask").addEventListener("submit", (event) => {
  event.preventDefault();
  if (streaming) {
    streaming.abort();
    return;
  }
  const question = $("prompt").value.trim();
  if (!question || $("model").disabled) return;
  $("prompt").value = "";
  ask(question);
});

$("prompt").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    if (!streaming) $("ask").requestSubmit();  // while an answer comes in, only the Stop button stops it
  }
});

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim();
  $("api-key").value = "";
  sessionStorage.setItem(KEY_STORAGE, apiKey);
  showModels();
});

$("new-chat").addEventListener("click", () => {
  streaming?.abort();
  conversation = [];
  $("messages").replaceChildren();
  $("prompt").focus();
});

function showModels() {
  loadModels().catch((error) => say(`The server cannot be reached: ${error.message}`));
}

showModels();
