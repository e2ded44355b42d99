#!/usr/bin/python3
"""A real SMTP server for the mail tests (Debian's python3-aiosmtpd): STARTTLS required, AUTH
required (after TLS), every message stored as JSON {mail_from, rcpt_tos, data} in DIR.

usage: smtp_sink.py PORT DIR CERT KEY USER PASSWORD   (prints "ready" once it listens)
"""
import json
import os
import ssl
import sys
import time
import warnings

# aiosmtpd 1.4 warns about its own login_data on each AUTH.
warnings.filterwarnings("ignore", category=DeprecationWarning)

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

port, outdir, cert, key, user, password = sys.argv[1:7]


class Store:
    count = 0

    async def handle_DATA(self, server, session, envelope):
        Store.count += 1
        path = os.path.join(outdir, f"{os.getpid()}-{Store.count}.json")
        with open(path + ".part", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos,
                       "data": envelope.content.decode("utf-8", "replace")}, f)
        os.rename(path + ".part", path)
        return "250 OK"


def authenticator(server, session, envelope, mechanism, auth_data):
    ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
        and auth_data.password.decode() == password
    return AuthResult(success=ok)


ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
ctx.load_cert_chain(cert, key)
controller = Controller(Store(), hostname="127.0.0.1", port=int(port), tls_context=ctx,
                        require_starttls=True, authenticator=authenticator, auth_require_tls=True,
                        auth_exclude_mechanism=["CRAM-MD5"])
controller.start()
print("ready", flush=True)
try:
    while True:
        time.sleep(3600)
finally:
    controller.stop()
