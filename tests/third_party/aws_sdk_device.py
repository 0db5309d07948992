"""A device written with AWS's own IoT device SDK for Python (awsiotsdk, on awscrt).

It follows the structure of the SDK's Fleet Provisioning sample: an MQTT 5 client built with
`mqtt5_client_builder.mtls_from_path`, the `IotIdentityClientV2` service client for
CreateCertificateFromCsr and RegisterThing, then a new MQTT 5 connection with the issued
certificate as the thing, which publishes one QoS 1 message and receives it back.

Usage:
  aws_sdk_device.py <emulator.json> <out-dir> <serial>
Prints one JSON line: thing, certificate id and the paths of the stored credentials.
Exits non-zero with the reason on stderr on any failure.
"""

import json
import os
import sys
from concurrent.futures import Future

from awscrt import mqtt5, mqtt_request_response
from awsiot import iotidentity, mqtt5_client_builder
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

WAIT = 15


def fail(reason):
    print(reason, file=sys.stderr)
    sys.exit(1)


def started_client(info, cert, key, client_id, on_message=None):
    """Builds an MQTT 5 client over mutual TLS and waits for its CONNACK."""
    connected, stopped = Future(), Future()

    def on_success(data):
        if not connected.done():
            connected.set_result(data.connack_packet)

    def on_failure(data):
        if not connected.done():
            connected.set_exception(RuntimeError(f"connect failed: {data.exception}"))

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=info["mqtt_host"],
        port=info["mqtt_port"],
        cert_filepath=cert,
        pri_key_filepath=key,
        ca_filepath=info["root_ca"],
        client_id=client_id,
        clean_start=True,
        keep_alive_secs=30,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=lambda _data: stopped.set_result(True),
        on_publish_received=on_message,
    )
    client.start()
    try:
        connected.result(WAIT)
    except Exception as error:
        client.stop()
        fail(f"{client_id}: {error}")
    return client, stopped


def stop(client, stopped):
    client.stop()
    stopped.result(WAIT)


def new_key_and_csr(serial):
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, serial)]))
           .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return key_pem, csr.public_bytes(serialization.Encoding.PEM).decode()


def provision_by_claim(info, serial):
    """CreateCertificateFromCsr then RegisterThing through the SDK's identity client."""
    client, stopped = started_client(info, info["claim_certificate"],
                                     info["claim_private_key"], f"provision-{serial}")
    identity = iotidentity.IotIdentityClientV2(
        client, mqtt_request_response.ClientOptions(max_request_response_subscriptions=2,
                                                    max_streaming_subscriptions=1,
                                                    operation_timeout_in_seconds=WAIT))
    key_pem, csr_pem = new_key_and_csr(serial)
    try:
        created = identity.create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr_pem)
        ).result(WAIT)
        registered = identity.register_thing(iotidentity.RegisterThingRequest(
            template_name=info["template"],
            certificate_ownership_token=created.certificate_ownership_token,
            parameters={"SerialNumber": serial},
        )).result(WAIT)
    except Exception as error:
        fail(f"provisioning by claim failed: {error}")
    finally:
        stop(client, stopped)
    return created, registered, key_pem


def write_private(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def echo_as_thing(info, thing, cert_path, key_path):
    """Connects as the thing, subscribes to its own topic, publishes QoS 1, waits for the echo."""
    received = Future()

    def on_message(data):
        if not received.done():
            received.set_result(data.publish_packet)

    client, stopped = started_client(info, cert_path, key_path, thing, on_message)
    topic = f"fleetsim/{thing}/echo"
    subscribed = client.subscribe(mqtt5.SubscribePacket(subscriptions=[
        mqtt5.Subscription(topic_filter=topic, qos=mqtt5.QoS.AT_LEAST_ONCE)])).result(WAIT)
    if subscribed.reason_codes[0] != mqtt5.SubackReasonCode.GRANTED_QOS_1:
        fail(f"subscribe refused: {subscribed.reason_codes}")
    puback = client.publish(mqtt5.PublishPacket(
        topic=topic, payload=b'{"temp":21.5}', qos=mqtt5.QoS.AT_LEAST_ONCE)).result(WAIT)
    if puback.puback.reason_code != mqtt5.PubackReasonCode.SUCCESS:
        fail(f"publish refused: {puback.puback.reason_code}")
    message = received.result(WAIT)
    stop(client, stopped)
    return message.payload


def main(argv):
    if len(argv) != 4:
        fail(__doc__)
    with open(argv[1]) as f:
        info = json.load(f)
    out_dir, serial = argv[2], argv[3]
    created, registered, key_pem = provision_by_claim(info, serial)
    os.makedirs(out_dir, exist_ok=True)
    cert_path, key_path = os.path.join(out_dir, "cert.pem"), os.path.join(out_dir, "key.pem")
    write_private(cert_path, created.certificate_pem.encode())
    write_private(key_path, key_pem)
    echoed = echo_as_thing(info, registered.thing_name, cert_path, key_path)
    print(json.dumps({"thing": registered.thing_name, "certificate_id": created.certificate_id,
                      "certificate": cert_path, "key": key_path, "echo": echoed.decode()}))


if __name__ == "__main__":
    main(sys.argv)
