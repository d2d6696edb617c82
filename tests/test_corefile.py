"""tests/corefile.py, the Corefile checker the chart and guide tests lean on: it accepts
real Corefiles (the one kubeadm installs, CoreDNS's own README examples) and refuses
what CoreDNS refuses at startup, saying where."""

from __future__ import annotations

import pytest
from corefile import PLUGINS, CorefileError, check_corefile, forwards, parse_corefile, tokenize

# The default Corefile of kubeadm and of Kubernetes's CoreDNS addon
# (cluster/addons/dns/coredns/coredns.yaml.base), with the cluster domain filled in.
KUBEADM = """.:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
"""

# A stub domain for fedns as the guides write it, with the options they may use.
STUB = """# fedns: the federation zone
global.example.test:53 {
    errors
    cache {
        success 9984 10 0
        denial 9984 10 0
        prefetch 10 1m 20%
        serve_stale 1h immediate
    }
    forward . 10.96.0.53 10.96.0.54:5353 [fd00::53]:53 tls://192.0.2.1 {
        policy sequential
        max_fails 2
        expire 10s
        health_check 5s
        force_tcp
    }
}
(common) {
    errors
    log
}
tls://example.test:853 10.0.0.0/24 {
    import common
    whoami
}
apps.example.test {
    cache 30 {
        disable success apps.example.test
        keepttl
    }
    template IN A apps.example.test {
        match .*[.]apps[.]example[.]test
        answer "{{ .Name }} 60 IN A 192.0.2.80"
        fallthrough
    }
}
"""


def test_real_corefiles_pass() -> None:
    assert check_corefile(KUBEADM) == []
    assert check_corefile(STUB) == []


def test_structure_is_read_as_coredns_reads_it() -> None:
    main, tls_block, apps = parse_corefile(STUB)
    (template,) = apps.plugin("template")
    assert template.args == ["IN", "A", "apps.example.test"]
    assert template.sub("answer")[0].args == ["{{ .Name }} 60 IN A 192.0.2.80"]
    assert main.keys == ["global.example.test:53"]
    assert [d.name for d in main.directives] == ["errors", "cache", "forward"]
    (cache,) = main.plugin("cache")
    assert [d.name for d in cache.block or []] == ["success", "denial", "prefetch", "serve_stale"]
    assert cache.sub("success")[0].args == ["9984", "10", "0"]
    # the snippet is expanded where it is imported, its lines kept apart
    assert tls_block.keys == ["tls://example.test:853", "10.0.0.0/24"]
    assert [d.name for d in tls_block.directives] == ["errors", "log", "whoami"]
    assert forwards(STUB, "global.example.test.") == [
        ["10.96.0.53", "10.96.0.54:5353", "[fd00::53]:53", "tls://192.0.2.1"]
    ]
    assert forwards(KUBEADM, ".") == [["/etc/resolv.conf"]]


def test_lexer_quotes_comments_and_lines() -> None:
    toks = tokenize('a "b c" d#x\n"q\\"uote" # all comment\n  e')
    assert [(t.text, t.line) for t in toks] == [
        ("a", 1), ("b c", 1), ("d", 1), ('q"uote', 2), ("e", 3)
    ]  # fmt: skip
    assert toks[1].quoted and not toks[0].quoted


def test_plugin_list_is_coredns_plugin_cfg() -> None:
    assert len(PLUGINS) == len(set(PLUGINS))
    for p in ("forward", "cache", "kubernetes", "errors", "health", "ready", "log", "rewrite"):
        assert p in PLUGINS
    assert "proxy" not in PLUGINS, "removed from CoreDNS in 1.6"


BROKEN = [
    ("global.example.test {\n    forward . 10.0.0.1\n", "never closed"),
    ("global.example.test {\n    forward . 10.0.0.1\n}\n}\n", "'}'"),
    ("global.example.test {\n    fowrard . 10.0.0.1\n}\n", "unknown directive 'fowrard'"),
    ("global.example.test {\n    proxy . 10.0.0.1\n}\n", "unknown directive 'proxy'"),
    ("global.example.test {\n    forward .\n}\n", "has no TO"),
    ("global.example.test {\n    forward\n}\n", "needs FROM"),
    ("global.example.test {\n    forward . <CLUSTER-IP>\n}\n", "'<CLUSTER-IP>'"),
    ("global.example.test {\n    forward . 10.0.0.1:99999\n}\n", "port '99999'"),
    ("global.example.test {\n    forward . quic://10.0.0.1\n}\n", "quic://"),
    ("global.example.test {\n    forward . 10.0.0.1 {\n        polcy random\n    }\n}\n", "unknown option 'polcy'"),
    ("global.example.test {\n    forward . 10.0.0.1 {\n        expire soon\n    }\n}\n", "expire needs one duration"),
    ("global.example.test {\n    forward . " + " ".join(f"10.0.0.{i}" for i in range(16)) + "\n}\n", "at most 15"),
    ("global.example.test {\n    cache 0\n}\n", "zero or negative"),
    ("global.example.test {\n    cache {\n        success many\n    }\n}\n", "whole numbers"),
    ("global.example.test {\n    cache {\n        success 100 0\n    }\n}\n", "TTL can not be zero"),
    ("global.example.test {\n    cache {\n        denial 100 10 -1\n    }\n}\n", "MINTTL can not be negative"),
    ("global.example.test {\n    cache {\n        success\n    }\n}\n", "1 to 3 numbers"),
    ("global.example.test {\n    cache {\n        prefetch 10 1m 95%\n    }\n}\n", "10%-90%"),
    ("global.example.test {\n    cache {\n        sucess 100\n    }\n}\n", "unknown option 'sucess'"),
    ("global.example.test {\n    cache\n    cache 30\n}\n", "once per server block"),
    ("global.example.test:0 {\n    whoami\n}\n", "port '0'"),
    ("ftp://global.example.test {\n    whoami\n}\n", "scheme ftp://"),
    ("global..example.test {\n    whoami\n}\n", "not a domain name"),
    ("a.test {\n    whoami\n}\na.test:53 {\n    whoami\n}\n", "already defined"),
    ('a.test {\n    log "unclosed\n}\n', "quoted string never closed"),
    ("a.test {\n    import nothing\n}\n", "no snippet"),
    ("a.test, {\n    whoami\n}\n", "another address"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "why"), BROKEN, ids=[w for _, w in BROKEN])
def test_broken_corefiles_fail_saying_why(text: str, why: str) -> None:
    problems = check_corefile(text)
    assert problems, text
    assert any(why in p for p in problems), problems
    assert all(p.startswith("line ") or p == "no server block" for p in problems), problems


def test_parse_raises_with_the_line() -> None:
    with pytest.raises(CorefileError, match=r"line 4: .}. where"):
        parse_corefile("a.test {\n    whoami\n    }\n}\n")
