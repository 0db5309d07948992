// A device written with MQTT.js against fleetsim's standalone emulator.
//
// It provisions by claim over MQTT 5 with CreateKeysAndCertificate (the service makes the
// key pair, as for devices that cannot make one), registers the thing with RegisterThing,
// then connects as the thing over MQTT 3.1.1 with the issued certificate and key, publishes
// one QoS 1 message to its own topic and receives it back.
//
// Usage: node mqttjs_device.mjs <emulator.json> <out-dir> <serial>
// Prints one JSON line; exits non-zero with the reason on stderr on any failure.

import { readFileSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import mqtt from "mqtt";

const WAIT_MS = 15000;

function fail(reason) {
  process.stderr.write(`${reason}\n`);
  process.exit(1);
}

function withDeadline(promise, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: no answer in ${WAIT_MS} ms`)), WAIT_MS);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

async function connect(info, cert, key, clientId, protocolVersion) {
  const client = mqtt.connect({
    protocol: "mqtts",
    host: info.mqtt_host,
    port: info.mqtt_port,
    ca: readFileSync(info.root_ca),
    cert,
    key,
    clientId,
    protocolVersion,
    clean: true,
    reconnectPeriod: 0,
    rejectUnauthorized: true,
  });
  await withDeadline(
    new Promise((resolve, reject) => {
      client.once("connect", resolve);
      client.once("error", reject);
    }),
    `connect as ${clientId}`,
  );
  return client;
}

// Subscribes to the reply topics, publishes the request, waits for accepted or rejected.
async function request(client, topic, payload) {
  await client.subscribeAsync([`${topic}/accepted`, `${topic}/rejected`], { qos: 1 });
  const reply = new Promise((resolve) => {
    client.on("message", (replyTopic, body) => {
      if (replyTopic.startsWith(topic)) {
        resolve({ accepted: replyTopic.endsWith("/accepted"), body: JSON.parse(body) });
      }
    });
  });
  await client.publishAsync(topic, JSON.stringify(payload), { qos: 1 });
  const { accepted, body } = await withDeadline(reply, topic);
  if (!accepted) fail(`${topic} rejected: ${JSON.stringify(body)}`);
  return body;
}

async function provisionByClaim(info, serial) {
  const claim = await connect(
    info,
    readFileSync(info.claim_certificate),
    readFileSync(info.claim_private_key),
    `provision-${serial}`,
    5,
  );
  const created = await request(claim, "$aws/certificates/create/json", {});
  const registered = await request(
    claim,
    `$aws/provisioning-templates/${info.template}/provision/json`,
    { certificateOwnershipToken: created.certificateOwnershipToken, parameters: { SerialNumber: serial } },
  );
  await claim.endAsync();
  return { created, registered };
}

async function echoAsThing(info, thing, cert, key) {
  const device = await connect(info, cert, key, thing, 4);
  const topic = `fleetsim/${thing}/echo`;
  const granted = await device.subscribeAsync(topic, { qos: 1 });
  if (granted[0].qos !== 1) fail(`subscribe to ${topic} refused: ${JSON.stringify(granted)}`);
  const echoed = new Promise((resolve) => device.on("message", (_t, body) => resolve(body)));
  await device.publishAsync(topic, '{"temp":21.5}', { qos: 1 });
  const body = await withDeadline(echoed, `echo on ${topic}`);
  await device.endAsync();
  return body.toString();
}

async function main([infoPath, outDir, serial]) {
  if (!serial) fail("usage: node mqttjs_device.mjs <emulator.json> <out-dir> <serial>");
  const info = JSON.parse(readFileSync(infoPath, "utf8"));
  const { created, registered } = await provisionByClaim(info, serial);
  mkdirSync(outDir, { recursive: true });
  const certPath = join(outDir, "cert.pem");
  const keyPath = join(outDir, "key.pem");
  writeFileSync(certPath, created.certificatePem, { mode: 0o600 });
  writeFileSync(keyPath, created.privateKey, { mode: 0o600 });
  const echo = await echoAsThing(info, registered.thingName, created.certificatePem, created.privateKey);
  process.stdout.write(
    `${JSON.stringify({ thing: registered.thingName, certificate_id: created.certificateId, certificate: certPath, key: keyPath, echo })}\n`,
  );
}

main(process.argv.slice(2)).catch((error) => fail(error.stack ?? String(error)));
