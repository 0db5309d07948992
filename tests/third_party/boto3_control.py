"""boto3 against fleetsim's standalone emulator, as an operator's script would use it.

Usage:
  boto3_control.py <emulator.json> <certificate-id-to-revoke>
      Calls DescribeEndpoint, ListThings, DescribeCertificate (of the claim) and
      UpdateCertificate (REVOKED) with static dummy credentials and the emulator's
      region, then DescribeCertificate of the revoked one. Prints one JSON object.
Exits non-zero, with boto3's error on stderr, when any call fails.
"""

import json
import sys

import boto3


def main(info_path, revoke_id):
    with open(info_path) as f:
        info = json.load(f)
    iot = boto3.client("iot", endpoint_url=info["control_url"], region_name=info["region"],
                       aws_access_key_id="AKIDFLEETSIMTEST", aws_secret_access_key="dummy")
    endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")
    things = iot.list_things()
    claim = iot.describe_certificate(certificateId=info["claim_certificate_id"])
    iot.update_certificate(certificateId=revoke_id, newStatus="REVOKED")
    revoked = iot.describe_certificate(certificateId=revoke_id)
    print(json.dumps({
        "endpoint": endpoint["endpointAddress"],
        "things": sorted(t["thingName"] for t in things["things"]),
        "claim_id": claim["certificateDescription"]["certificateId"],
        "claim_status": claim["certificateDescription"]["status"],
        "claim_pem": claim["certificateDescription"]["certificatePem"],
        "revoked_status": revoked["certificateDescription"]["status"],
    }))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1], sys.argv[2])
