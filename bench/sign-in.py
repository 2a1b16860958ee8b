#!/usr/bin/env python3
"""Signs a person in through Drawbridge and the test OpenID provider (its plain form), the
way a browser would, and prints the session cookie's value: what the benchmark's session
routes are loaded with.

    bench/sign-in.py https://localhost:18103/tls-session/ alice alice-pw
"""
import html.parser
import http.cookiejar
import ssl
import sys
import urllib.parse
import urllib.request

url, user, password = sys.argv[1], sys.argv[2], sys.argv[3]
jar = http.cookiejar.CookieJar()
insecure = ssl.create_default_context()
insecure.check_hostname = False
insecure.verify_mode = ssl.CERT_NONE  # the benchmark's own throwaway certificate
opener = urllib.request.build_opener(
    urllib.request.HTTPCookieProcessor(jar), urllib.request.HTTPSHandler(context=insecure)
)
opener.addheaders = [("Accept", "text/html"), ("Sec-Fetch-Mode", "navigate"), ("Sec-Fetch-Dest", "document")]


class Form(html.parser.HTMLParser):
    action = None

    def handle_starttag(self, tag, attrs):
        if tag == "form" and self.action is None:
            self.action = dict(attrs).get("action")


page = opener.open(url)
form = Form()
form.feed(page.read().decode())
target = urllib.parse.urljoin(page.geturl(), form.action)
body = urllib.parse.urlencode({"login": user, "password": password}).encode()
landed = opener.open(target, data=body)
if landed.status != 200 or not landed.geturl().startswith(url.split("?")[0]):
    sys.exit(f"sign-in ended at {landed.geturl()} ({landed.status})")
for c in jar:
    if c.name == "__Host-drawbridge-session":
        print(c.value)
        break
else:
    sys.exit("no session cookie")
