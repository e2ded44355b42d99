#!/usr/bin/python3
"""FTP client for buildbay's tests (Python's ftplib, as dput uses).

  ftp_client.py upload HOST:PORT FILE...          upload into /incoming; prints the replies as JSON
  ftp_client.py parallel HOST:PORT DIR...         one connection per DIR, all at once; uploads every
                                                  file of DIR, the .changes last; prints the replies
  ftp_client.py hostile HOST:PORT SMALL BIG       tries what the drop box must refuse; prints each reply
  ftp_client.py timed HOST:PORT DIR...            uploads each DIR in turn on one connection; prints the
                                                  wall-clock time at which each DIR's last file was stored
"""
import ftplib
import json
import os
import sys
import threading


def connect(hostport):
    host, port = hostport.rsplit(":", 1)
    ftp = ftplib.FTP()
    ftp.connect(host, int(port), timeout=60)
    ftp.login()
    ftp.set_pasv(True)
    return ftp


def reply(fn, *args):
    try:
        return fn(*args)
    except ftplib.all_errors as e:
        return str(e)


def put(ftp, path, name):
    with open(path, "rb") as f:
        return reply(ftp.storbinary, "STOR " + name, f)


def upload(hostport, files):
    ftp = connect(hostport)
    ftp.cwd("/incoming")
    out = [put(ftp, f, os.path.basename(f)) for f in files]
    ftp.quit()
    return out


def ordered(d):
    names = sorted(os.listdir(d))
    return [os.path.join(d, n) for n in names if not n.endswith(".changes")] + [
        os.path.join(d, n) for n in names if n.endswith(".changes")]


def parallel(hostport, dirs):
    results = {}

    def one(d):
        try:
            results[d] = upload(hostport, ordered(d))
        except Exception as e:  # a refused connection is a result too
            results[d] = [repr(e)]

    threads = [threading.Thread(target=one, args=(d,)) for d in dirs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def timed(hostport, dirs):
    import time
    ftp = connect(hostport)
    ftp.cwd("/incoming")
    out = []
    for d in dirs:
        files = ordered(d)
        replies = [put(ftp, f, os.path.basename(f)) for f in files[:-1]]
        # The last file by hand, to note when its last byte left: before the server's reply.
        with open(files[-1], "rb") as f:
            data = f.read()
        conn = ftp.transfercmd("STOR " + os.path.basename(files[-1]))
        conn.sendall(data)
        end = time.time()
        conn.close()
        replies.append(reply(ftp.voidresp))
        out.append({"dir": d, "end": end, "ok": all(r.startswith("226") for r in replies)})
    ftp.quit()
    return out


def hostile(hostport, small, big):
    ftp = connect(hostport)
    r = {}
    r["stor_parent"] = put(ftp, small, "../escape.txt")
    r["stor_absolute"] = put(ftp, small, "/etc/escape.txt")
    r["stor_root"] = put(ftp, small, "/escape.txt")
    r["stor_through_parent"] = put(ftp, small, "/incoming/../incoming/escape.txt")
    r["stor_subdir"] = put(ftp, small, "/incoming/sub/escape.txt")
    r["stor_dotfile"] = put(ftp, small, "/incoming/.hidden")
    r["cwd_etc"] = reply(ftp.cwd, "/etc")
    r["cwd_parent"] = reply(ftp.cwd, "..")
    r["cwd_incoming"] = reply(ftp.cwd, "/incoming")
    r["stor_ok"] = put(ftp, small, "ok.txt")
    r["stor_big"] = put(ftp, big, "big.bin")
    r["retr"] = reply(ftp.retrbinary, "RETR ok.txt", lambda b: None)
    r["retr_passwd"] = reply(ftp.retrbinary, "RETR /etc/passwd", lambda b: None)
    r["list"] = reply(ftp.nlst)
    r["dele"] = reply(ftp.delete, "ok.txt")
    r["rename"] = reply(ftp.rename, "ok.txt", "../moved.txt")
    r["mkd"] = reply(ftp.mkd, "newdir")
    r["rmd"] = reply(ftp.rmd, "/incoming")
    ftp.quit()
    return r


def main():
    cmd, hostport, args = sys.argv[1], sys.argv[2], sys.argv[3:]
    if cmd == "upload":
        out = upload(hostport, args)
    elif cmd == "parallel":
        out = parallel(hostport, args)
    elif cmd == "timed":
        out = timed(hostport, args)
    elif cmd == "hostile":
        out = hostile(hostport, *args)
    else:
        sys.exit("unknown command " + cmd)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
