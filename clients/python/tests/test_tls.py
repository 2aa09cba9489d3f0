"""The client over mutual TLS, with a CA made here by openssl."""
import subprocess

import grpc
import pytest

from conftest import serve

LEAF_EXTENSIONS = "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage={}\n"


def _openssl(directory, *args):
    subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)


def _leaf(directory, name, usage):
    _openssl(directory, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.csr")
    (directory / f"{name}.ext").write_text(LEAF_EXTENSIONS.format(usage))
    _openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-CAcreateserial", "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.pem")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp("pki")
    _openssl(directory, "req", "-x509", "-newkey", "ec", "-pkeyopt",
             "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=test CA",
             "-keyout", "ca.key", "-out", "ca.pem",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign")
    _leaf(directory, "server", "serverAuth")
    _leaf(directory, "client", "clientAuth")
    return directory


def test_the_client_works_over_mutual_tls_with_a_token_and_a_stranger_is_refused(
        pki, monkeypatch):
    from batch_history_client import BatchHistory
    env = {"TLS_CERT_FILE": str(pki / "server.pem"), "TLS_KEY_FILE": str(pki / "server.key"),
           "TLS_CLIENT_CA_FILE": str(pki / "ca.pem"), "AUTH_TOKEN": "s3cret-token"}
    healthcheck = ["--tls-ca-file", str(pki / "ca.pem"), "--tls-cert-file",
                   str(pki / "client.pem"), "--tls-key-file", str(pki / "client.key"),
                   "--tls-server-name", "localhost"]
    with serve(env, healthcheck) as server:
        addr = server.addr
        # From arguments: PEM paths or bytes, and the token.
        client = BatchHistory(addr, attempts=1, token="s3cret-token",
                              root_certificates=str(pki / "ca.pem"),
                              certificate_chain=(pki / "client.pem").read_bytes(),
                              private_key=str(pki / "client.key"), server_name="localhost")
        try:
            batch_id = client.start(model="m")
            client.progress(batch_id, samples=3)
            assert client.get(batch_id)["samples_generated"] == 3
        finally:
            client.close()

        # From the variables the service documents, the token from a file.
        (pki / "token").write_text("s3cret-token\n")
        for name, value in {"BATCH_HISTORY_ADDR": addr, "AUTH_TOKEN_FILE": str(pki / "token"),
                            "HEALTHCHECK_TLS_CA_FILE": str(pki / "ca.pem"),
                            "HEALTHCHECK_TLS_CERT_FILE": str(pki / "client.pem"),
                            "HEALTHCHECK_TLS_KEY_FILE": str(pki / "client.key"),
                            "HEALTHCHECK_TLS_SERVER_NAME": "localhost"}.items():
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AUTH_TOKEN", raising=False)
        with BatchHistory(attempts=1) as from_env:
            assert from_env.get(batch_id)["samples_generated"] == 3
        with BatchHistory(attempts=1, token="wrong") as wrong_token:
            with pytest.raises(grpc.RpcError) as refused:
                wrong_token.get(batch_id)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # No client certificate: refused by mutual TLS, token or not.
        stranger = BatchHistory(
            addr, channel=grpc.secure_channel(
                addr, grpc.ssl_channel_credentials((pki / "ca.pem").read_bytes()),
                options=[("grpc.ssl_target_name_override", "localhost")]),
            attempts=1, timeout=2.0, token="s3cret-token")
        try:
            with pytest.raises(grpc.RpcError) as refused:
                stranger.get("any")
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        finally:
            stranger.close()
