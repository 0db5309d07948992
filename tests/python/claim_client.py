"""A third-party device for fleetsim's standalone emulator: paho-mqtt and cryptography.

Usage:
  claim_client.py provision <emulator.json> <out-dir> <serial>
      Connects with the claim certificate, makes an EC P-256 key and CSR, calls
      CreateCertificateFromCsr and RegisterThing, then reconnects with the new
      certificate as the thing and publishes one QoS 1 message. Prints a JSON line.
  claim_client.py connect <emulator.json> <cert> <key> <client-id>
      Tries one mutual-TLS MQTT connection. Prints {"connected": true|false, ...}.
Exits non-zero on any unexpected failure, with the reason on stderr.
"""

import json
import os
import queue
import ssl
import sys

import paho.mqtt.client as mqtt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WAIT = 10


def client(info, cert, key, client_id):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv311)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=info["root_ca"])
    context.load_cert_chain(cert, key)
    c.tls_set_context(context)
    return c


def connect(info, cert, key, client_id):
    """Returns (client, None) when CONNACK accepted, else (None, reason)."""
    c = client(info, cert, key, client_id)
    result = queue.Queue()
    c.on_connect = lambda _c, _u, _f, code, _p: result.put(("connack", str(code)))
    c.on_disconnect = lambda _c, _u, _f, code, _p: result.put(("closed", str(code)))
    c.inbox = queue.Queue()
    c.on_message = lambda _c, _u, message: c.inbox.put(message)
    try:
        c.connect(info["mqtt_host"], info["mqtt_port"], keepalive=60)
    except (ssl.SSLError, OSError) as error:
        return None, f"handshake: {error}"
    c.loop_start()
    try:
        kind, code = result.get(timeout=WAIT)
    except queue.Empty:
        kind, code = "timeout", "no CONNACK"
    if kind == "connack" and code == "Success":
        return c, None
    c.loop_stop()
    return None, f"{kind}: {code}"


def request(c, topic, payload):
    """Subscribes to the reply topics, publishes, returns (accepted?, reply dict)."""
    subscribed = queue.Queue()
    c.on_subscribe = lambda *_args: subscribed.put(True)
    c.subscribe([(f"{topic}/accepted", 1), (f"{topic}/rejected", 1)])
    subscribed.get(timeout=WAIT)
    c.publish(topic, json.dumps(payload), qos=1)
    message = c.inbox.get(timeout=WAIT)
    return message.topic.endswith("/accepted"), json.loads(message.payload)


def new_key_and_csr(serial):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def provision(info, out_dir, serial):
    c, refused = connect(info, info["claim_certificate"], info["claim_private_key"],
                         f"provision-{serial}")
    if c is None:
        fail(f"claim certificate refused: {refused}")
    key_pem, csr_pem = new_key_and_csr(serial)
    ok, created = request(c, "$aws/certificates/create-from-csr/json",
                          {"certificateSigningRequest": csr_pem})
    if not ok:
        fail(f"CreateCertificateFromCsr rejected: {created}")
    template = info["template"]
    ok, registered = request(c, f"$aws/provisioning-templates/{template}/provision/json", {
        "certificateOwnershipToken": created["certificateOwnershipToken"],
        "parameters": {"SerialNumber": serial},
    })
    if not ok:
        fail(f"RegisterThing rejected: {registered}")
    c.disconnect()
    c.loop_stop()

    os.makedirs(out_dir, exist_ok=True)
    cert_path, key_path = os.path.join(out_dir, "cert.pem"), os.path.join(out_dir, "key.pem")
    write_private(cert_path, created["certificatePem"].encode())
    write_private(key_path, key_pem)
    thing = registered["thingName"]
    device, refused = connect(info, cert_path, key_path, thing)
    if device is None:
        fail(f"new certificate refused: {refused}")
    published = device.publish(f"fleetsim/{thing}/telemetry", b'{"temp":21.5}', qos=1)
    published.wait_for_publish(timeout=WAIT)
    if not published.is_published():
        fail("telemetry was not acknowledged")
    device.disconnect()
    device.loop_stop()
    print(json.dumps({"thing": thing, "certificate_id": created["certificateId"],
                      "certificate": cert_path, "key": key_path}))


def fail(reason):
    print(reason, file=sys.stderr)
    sys.exit(1)


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    with open(argv[2]) as f:
        info = json.load(f)
    if argv[1] == "provision" and len(argv) == 5:
        provision(info, argv[3], argv[4])
    elif argv[1] == "connect" and len(argv) == 6:
        c, refused = connect(info, argv[3], argv[4], argv[5])
        if c is not None:
            c.disconnect()
            c.loop_stop()
        print(json.dumps({"connected": c is not None, "refusal": refused}))
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
