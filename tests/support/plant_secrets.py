#!/usr/bin/env python3
"""Writes a tree holding one real-format secret for every amiforge secret rule, made
fresh at test time: keys by ssh-keygen and openssl, tokens from a CSPRNG in each
provider's documented format. Some sit in plain files, some in gzip/xz/zstd logs, some
in shell histories. Also writes the non-secret corpus (hashes, UUIDs, base64 images,
sha256sums, PGP public keys) that must yield no finding.

    plant_secrets.py secrets-tree/ clean-tree/ expected.json

expected.json maps each rule id to the path (inside the tree) that holds it, plus
"deleted": the secrets the test deletes afterwards, to be found in unallocated space.
"""
import base64
import gzip
import json
import lzma
import os
import secrets
import string
import subprocess
import sys
import tempfile
import uuid

ALNUM = string.ascii_letters + string.digits
UPPER_B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"


def rand(n, alphabet=ALNUM):
    return "".join(secrets.choice(alphabet) for _ in range(n))


def run(*cmd):
    return subprocess.run(cmd, check=True, capture_output=True, text=True).stdout


def ssh_key(kind):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k")
        run("ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "build@host", "-f", path)
        return open(path).read()


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def armored(label, body_bytes):
    body = base64.b64encode(body_bytes).decode()
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    crc = base64.b64encode(secrets.token_bytes(3)).decode()
    return f"-----BEGIN {label}-----\n\n{lines}\n={crc}\n-----END {label}-----\n"


def planted():
    """rule id -> file content holding one secret of that rule."""
    dsa_params = run("openssl", "dsaparam", "1024")
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as p:
        p.write(dsa_params)
        p.flush()
        dsa = run("openssl", "gendsa", p.name)
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as k:
        k.write(dsa)
        k.flush()
        dsa_traditional = run("openssl", "pkey", "-in", k.name, "-traditional")
    jwt = ".".join([
        b64url(b'{"alg":"HS256","typ":"JWT"}'),
        b64url(json.dumps({"sub": rand(12), "iat": 1700000000}).encode()),
        b64url(secrets.token_bytes(32)),
    ])
    return {
        "private-key-rsa": run("openssl", "genrsa", "-traditional", "2048"),
        "private-key-ec": run("openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout"),
        "private-key-dsa": dsa_traditional,
        "private-key-openssh": ssh_key("ed25519"),
        "private-key-pkcs8": run("openssl", "genpkey", "-algorithm", "RSA",
                                 "-pkeyopt", "rsa_keygen_bits:2048"),
        "private-key-pkcs8-encrypted": run("openssl", "genpkey", "-algorithm", "RSA",
                                           "-pkeyopt", "rsa_keygen_bits:1024", "-aes256",
                                           "-pass", "pass:" + rand(12)),
        "private-key-pgp": armored("PGP PRIVATE KEY BLOCK", secrets.token_bytes(600)),
        "private-key-putty": "PuTTY-User-Key-File-3: ssh-ed25519\nEncryption: none\n"
                             "Comment: eddsa-key-20260101\nPublic-Lines: 2\n"
                             f"AAAAC3NzaC1lZDI1NTE5AAAAI{rand(40)}\n{rand(20)}\n"
                             f"Private-Lines: 1\nAAAAI{rand(43)}=\nPrivate-MAC: {rand(64, '0123456789abcdef')}\n",
        "private-key-age": "# created: 2026-01-01\n# public key: age1" + rand(58, "qpzry9x8gf2tvdw0s3jn54khce6mua7l")
                           + "\nAGE-SECRET-KEY-1" + rand(58, "QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L") + "\n",
        "aws-access-key-id": "[default]\naws_access_key_id = AKIA" + rand(16, UPPER_B32) + "\n",
        "aws-secret-access-key": "[default]\naws_secret_access_key = " + rand(40, ALNUM + "/+") + "\n",
        "aws-session-token": "aws_session_token = " + base64.b64encode(secrets.token_bytes(240)).decode() + "\n",
        "gcp-service-account-key": json.dumps({
            "type": "service_account", "project_id": "build-" + rand(6).lower(),
            "private_key_id": secrets.token_hex(20),
            "private_key": "-----BEGIN PRIVATE KEY-----\\nMIIE" + rand(60) + "\\n-----END PRIVATE KEY-----\\n",
            "client_email": "ci@build.iam.gserviceaccount.com",
        }, indent=2),
        "gcp-api-key": "GOOGLE_API_KEY=AIza" + rand(35, ALNUM + "_-") + "\n",
        "google-oauth-client-secret": '{"client_secret": "GOCSPX-' + rand(28, ALNUM + "_-") + '"}\n',
        "azure-storage-connection-string": "DefaultEndpointsProtocol=https;AccountName=builds;AccountKey="
            + base64.b64encode(secrets.token_bytes(64)).decode() + ";EndpointSuffix=core.windows.net\n",
        "azure-sas-token": "https://builds.blob.core.windows.net/c/x?sv=2022-11-02&ss=b&srt=co&sp=rl"
            "&se=2026-12-31T00:00:00Z&spr=https&sig="
            + base64.b64encode(secrets.token_bytes(32)).decode().replace("+", "%2B").replace("/", "%2F").replace("=", "%3D") + "\n",
        "azure-ad-client-secret": "AZURE_CLIENT_SECRET=" + rand(3) + "8Q~" + rand(34, ALNUM + "_-") + "\n",
        "digitalocean-token": "DIGITALOCEAN_TOKEN=dop_v1_" + secrets.token_hex(32) + "\n",
        "github-pat": "GITHUB_TOKEN=ghp_" + rand(36) + "\n",
        "github-oauth-token": "oauth_token: gho_" + rand(36) + "\n",
        "github-user-to-server-token": "token ghu_" + rand(36) + "\n",
        "github-server-to-server-token": "token ghs_" + rand(36) + "\n",
        "github-refresh-token": "refresh ghr_" + rand(76) + "\n",
        "github-fine-grained-pat": "GH_PAT=github_pat_" + rand(22) + "_" + rand(59) + "\n",
        "gitlab-pat": "GITLAB_TOKEN=glpat-" + rand(20, ALNUM + "_-") + "\n",
        "gitlab-runner-token": 'token = "glrt-' + rand(20, ALNUM + "_-") + '"\n',
        "npm-token": "NPM_TOKEN=npm_" + rand(36) + "\n",
        "npmrc-auth-token": "//registry.example.org/:_authToken=" + rand(40, ALNUM + "-_") + "\n",
        "pypi-token": "[pypi]\nusername = __token__\npassword = pypi-AgEIcHlwaS5vcmc" + rand(70, ALNUM + "_-") + "\n",
        "docker-config-auth": json.dumps({"auths": {"registry.example.org": {
            "auth": base64.b64encode(f"ci:{rand(20)}".encode()).decode()}}}, indent=2),
        "slack-token": "SLACK_BOT_TOKEN=xoxb-" + rand(12, string.digits) + "-" + rand(13, string.digits) + "-" + rand(24) + "\n",
        "slack-webhook-url": "https://hooks.slack.com/services/T" + rand(10, UPPER_B32) + "/B" + rand(10, UPPER_B32) + "/" + rand(24) + "\n",
        "stripe-secret-key": "STRIPE_KEY=sk_live_" + rand(99) + "\n",
        "stripe-test-key": "STRIPE_TEST_KEY=sk_test_" + rand(24) + "\n",
        "sendgrid-api-key": "SENDGRID_API_KEY=SG." + rand(22, ALNUM + "_-") + "." + rand(43, ALNUM + "_-") + "\n",
        "shopify-access-token": "SHOPIFY_TOKEN=shpat_" + secrets.token_hex(16) + "\n",
        "openai-api-key": "OPENAI_API_KEY=sk-proj-" + rand(64, ALNUM + "_-") + "T3BlbkFJ" + rand(64, ALNUM + "_-") + "\n",
        "anthropic-api-key": "ANTHROPIC_API_KEY=sk-ant-api03-" + rand(93, ALNUM + "_-") + "AA\n",
        "huggingface-token": "HF_TOKEN=hf_" + rand(34, string.ascii_letters) + "\n",
        "jwt": "Authorization: Bearer " + jwt + "\n",
        "database-url-with-password": "DATABASE_URL=postgresql://app:" + rand(16) + "@db.internal:5432/app\n",
        "url-with-password": "url = https://deploy:" + rand(14) + "@git.internal.example/repo.git\n",
        "netrc-password": "machine api.example.org login deploy password " + rand(18) + "\n",
        "kubeconfig-client-key": "users:\n- name: admin\n  user:\n    client-key-data: "
            + base64.b64encode(secrets.token_bytes(600)).decode() + "\n",
        "kubernetes-bearer-token": "users:\n- name: ci\n  user:\n    token: " + rand(64, ALNUM + "-_.") + "\n",
        "vault-service-token": "VAULT_TOKEN=hvs." + rand(90, ALNUM + "_-") + "\n",
        "vault-batch-token": "VAULT_TOKEN=hvb." + rand(100, ALNUM + "_-") + "\n",
        "terraform-cloud-token": 'credentials "app.terraform.io" {\n  token = "' + rand(14) + ".atlasv1." + rand(67, ALNUM + "_-") + '"\n}\n',
        "generic-password-assignment": "[database]\ndb_password = " + rand(19) + "7\n",
    }


def clean_corpus(root):
    """Files full of things that look random but are not secrets."""
    def write(rel, text):
        path = os.path.join(root, rel.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
    write("/srv/release/SHA256SUMS", "".join(
        f"{secrets.token_hex(32)}  pkg-{i}.tar.gz\n" for i in range(200)))
    write("/var/lib/dpkg/info/demo.md5sums", "".join(
        f"{secrets.token_hex(16)}  usr/share/doc/demo/file{i}\n" for i in range(200)))
    write("/srv/data/uuids.txt", "".join(f"{uuid.uuid4()}\n" for _ in range(500)))
    write("/srv/git/objects.txt", "".join(
        f"commit {secrets.token_hex(20)}\ntree {secrets.token_hex(20)}\n" for _ in range(100)))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + secrets.token_bytes(3000)).decode()
    write("/srv/www/index.html", f'<html><body><img src="data:image/png;base64,{png}"></body></html>\n')
    write("/etc/apt/trusted.gpg.d/demo.asc", armored("PGP PUBLIC KEY BLOCK", secrets.token_bytes(1200)))
    write("/etc/ssh/ssh_known_hosts", "".join(
        f"host{i}.example ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI{rand(43)}\n" for i in range(50)))
    write("/etc/app/app.conf",
          "password_file = /run/secrets/db\npassword: ${DB_PASSWORD}\nsecret = changeme\n"
          "PasswordAuthentication no\napi_key = <your-key-here>\n")


def main():
    tree, clean, expected_path = sys.argv[1:4]
    rules = planted()
    expected = {}
    # Where each rule's secret goes; the rest get their own plain file.
    histories = {"slack-token", "github-oauth-token"}
    gz_log = {"github-pat", "aws-access-key-id"}
    xz_file = {"stripe-secret-key"}
    zst_file = {"sendgrid-api-key"}
    log = []
    for rule, content in sorted(rules.items()):
        if rule in histories:
            rel = "/root/.bash_history"
        elif rule in gz_log:
            rel = "/var/log/app/app.log.1.gz"
        elif rule in xz_file:
            rel = "/var/log/app/app.log.2.xz"
        elif rule in zst_file:
            rel = "/var/log/app/app.log.3.zst"
        else:
            rel = f"/srv/planted/{rule}.txt"
        expected[rule] = rel
        log.append((rel, content))
    by_path = {}
    for rel, content in log:
        by_path.setdefault(rel, []).append(content)
    for rel, parts in by_path.items():
        data = ("\n".join(parts)).encode()
        if rel.endswith(".gz"):
            data = gzip.compress(b"ordinary log line\n" * 1000 + data)
        elif rel.endswith(".xz"):
            data = lzma.compress(data)
        elif rel.endswith(".zst"):
            data = subprocess.run(["zstd", "-q", "-c"], input=data, check=True, capture_output=True).stdout
        path = os.path.join(tree, rel.lstrip("/"))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    # Secrets the test deletes: their bytes stay in unallocated blocks.
    deleted_key = ssh_key("ed25519")
    os.makedirs(os.path.join(tree, "home/dev/.ssh"), exist_ok=True)
    with open(os.path.join(tree, "home/dev/.ssh/id_deleted"), "w") as f:
        f.write(deleted_key)
    deleted_fat = run("openssl", "genrsa", "-traditional", "2048")
    expected["deleted"] = {
        "ext4": {"path": "/home/dev/.ssh/id_deleted", "rule": "private-key-openssh",
                 "body_start": deleted_key.split("\n", 1)[1][:32]},
        "fat": {"content": deleted_fat, "rule": "private-key-rsa",
                "body_start": deleted_fat.split("\n", 1)[1][:32]},
    }
    # A root filesystem: os-release makes it one.
    os.makedirs(os.path.join(tree, "etc"), exist_ok=True)
    with open(os.path.join(tree, "etc/os-release"), "w") as f:
        f.write('ID=debian\nVERSION_ID="12"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n')
    clean_corpus(clean)
    with open(expected_path, "w") as f:
        json.dump(expected, f, indent=2)


if __name__ == "__main__":
    main()
