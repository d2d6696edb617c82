"""A fake Kubernetes API server (aiohttp) that speaks the real list+watch protocol.

One ``FakeKube`` per simulated cluster. It serves, over plain HTTP on
loopback, what a client-go style reflector uses:

* ``GET /api/v1/services``, ``/api/v1/namespaces/{ns}/services``,
  ``/apis/discovery.k8s.io/v1/endpointslices`` (and namespaced),
  ``/apis/multicluster.x-k8s.io/v1alpha1/serviceexports`` (and namespaced),
  ``/version``;
* lists: ``{"kind": "ServiceList", "metadata": {"resourceVersion": N}, "items": [...]}``;
  ``labelSelector`` (=, ==, !=, in, notin, exists, !exists); ``resourceVersion`` "", "0" or N;
* watches (``watch=true|True|1``, Go's ParseBool): newline-delimited JSON
  events ADDED/MODIFIED/DELETED/BOOKMARK/ERROR over a chunked response;
  ``resourceVersion`` unset/"0" starts with synthetic ADDED events for the
  current state, N replays history after N; ``allowWatchBookmarks`` sends a
  BOOKMARK every ``bookmark_interval`` and just before the end;
  ``timeoutSeconds`` ends the stream cleanly; objects entering or leaving a
  label selection arrive as ADDED / DELETED, as the real watch cache does;
* one resourceVersion counter for all kinds (as etcd's revision) and a
  compaction point: watching from a version older than it gets the real
  server's answer, a 200 with one ``ERROR`` event carrying a 410 ``Expired``
  Status (or, with ``expired_as_http=True``, an HTTP 410).

Faults (``inject`` for the next matching request; ``drop_watches``,
``stall_watches``, ``error_watches`` for streams already open; ``down``/``up``
for the whole server): HTTP 500, 429 with Retry-After, an HTML 502 body, HTTP
410, a 410 ERROR event, a dropped connection (mid-line), a stalled stream,
an immediate clean close.

What a second client, ``kubectl``, needs (tests/test_fakekube_kubectl.py checks it):

* discovery: ``/api``, ``/apis``, ``/api/v1``, ``/apis/{group}``, ``/apis/{group}/{version}``
  in the legacy form, and the aggregated form (``apidiscovery.k8s.io`` v2 and v2beta1,
  with ETag / 304) when the ``Accept`` header asks for it (``aggregated_discovery=False``
  serves only the legacy form, as a pre-1.26 server); unknown paths get a JSON ``Status`` 404;
* content negotiation on ``Accept`` (media ranges in order, ``q`` honoured, 406 when
  nothing fits): plain JSON, ``meta.k8s.io`` ``Table`` (v1, v1beta1; the server-side
  printer columns of Services, EndpointSlices and a CRD's default, ``includeObject``;
  in a watch only the first event carries the column definitions) and
  ``PartialObjectMetadata(List)``;
* ``limit``/``continue`` paging of consistent reads (``resourceVersion`` unset, or N which
  then means Exact): opaque continue tokens pinned to the first page's resourceVersion,
  ``remainingItemCount`` without selectors, 410 with an inconsistent-continue token once
  that version is compacted; ``resourceVersion=0`` ignores ``limit`` (the watch cache);
  ``resourceVersionMatch`` (Exact, NotOlderThan) and the ListOptions validation (422);
  ``sendInitialEvents`` refused as by a server without the WatchList feature;
* ``fieldSelector`` (``metadata.name``, ``metadata.namespace``; Services also
  ``spec.clusterIP``, ``spec.type``; =, ==, !=) on lists and watches, with
  ADDED/DELETED on entering/leaving the selection like label selectors;
* Services stored as the API server defaults them (``spec.type``, ``spec.clusterIPs``).

Every request is appended to ``request_log`` (method, path, query, Accept, User-Agent).

``write_kubeconfig`` writes a kubeconfig (``http://127.0.0.1:PORT``, no
auth) that the unmodified kubernetes-asyncio client and kubectl load.

The ``fake_kube`` pytest fixture is a factory: ``kube = await fake_kube("east")``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

SERVICES = "services"
ENDPOINTSLICES = "endpointslices"
SERVICEEXPORTS = "serviceexports"

# resource -> (API prefix, apiVersion, kind)
RESOURCES: dict[str, tuple[str, str, str]] = {
    SERVICES: ("/api/v1", "v1", "Service"),
    ENDPOINTSLICES: ("/apis/discovery.k8s.io/v1", "discovery.k8s.io/v1", "EndpointSlice"),
    SERVICEEXPORTS: (
        "/apis/multicluster.x-k8s.io/v1alpha1",
        "multicluster.x-k8s.io/v1alpha1",
        "ServiceExport",
    ),
}
_TRUE = {"1", "t", "T", "TRUE", "true", "True"}  # Go strconv.ParseBool
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}
HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>nginx</center>\r\n"
    b"</body>\r\n</html>\r\n"
)


def status_object(code: int, reason: str, message: str, **details: Any) -> dict[str, Any]:
    st: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        st["details"] = details
    return st


# -- label selectors (written independently of resolver/fedconfig.py on purpose) -----------


def _selector(text: str | None) -> list[tuple[str, str, set[str]]] | None:
    if not text:
        return None
    reqs: list[tuple[str, str, set[str]]] = []
    for part in re.split(r",(?![^()]*\))", text):
        p = part.strip()
        m = re.fullmatch(r"([^\s!=(),]+)\s+(in|notin)\s+\(([^)]*)\)", p)
        if m:
            reqs.append((m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}))
        elif p.startswith("!"):
            reqs.append((p[1:].strip(), "!", set()))
        elif "!=" in p:
            k, v = p.split("!=", 1)
            reqs.append((k.strip(), "!=", {v.strip()}))
        elif "=" in p:
            k, v = re.split(r"==?", p, maxsplit=1)
            reqs.append((k.strip(), "=", {v.strip()}))
        elif re.fullmatch(r"[^\s!=(),]+", p):
            reqs.append((p, "exists", set()))
        else:
            raise ValueError(f"unable to parse requirement: {p!r}")
    return reqs


def _matches(sel: list[tuple[str, str, set[str]]] | None, obj: Mapping[str, Any] | None) -> bool:
    if obj is None:
        return False
    if sel is None:
        return True
    labels = obj.get("metadata", {}).get("labels") or {}
    for key, op, vals in sel:
        has = key in labels
        if op == "exists" and not has:
            return False
        if op == "!" and has:
            return False
        if op in ("=", "in") and not (has and labels[key] in vals):
            return False
        if op in ("!=", "notin") and has and labels[key] in vals:
            return False
    return True


# -- field selectors ------------------------------------------------------------------------------

# What the real API server lets a fieldSelector name, per resource (every kind has the
# metadata pair; Services add two of their own, pkg/registry/core/service).
_FIELDS: dict[str, tuple[str, ...]] = {
    SERVICES: ("metadata.name", "metadata.namespace", "spec.clusterIP", "spec.type"),
    ENDPOINTSLICES: ("metadata.name", "metadata.namespace"),
    SERVICEEXPORTS: ("metadata.name", "metadata.namespace"),
}


def _field_selector(resource: str, text: str | None) -> list[tuple[str, str, str]] | None:
    if not text:
        return None
    reqs: list[tuple[str, str, str]] = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([^=!\s]+)\s*(!=|==|=)\s*([^,]*?)\s*", part)
        if m is None:
            raise ValueError(f"invalid selector: '{text}'; can't understand '{part}'")
        key, op, value = m.group(1), m.group(2), m.group(3)
        if key not in _FIELDS[resource]:
            raise ValueError(f"field label not supported: {key}")
        reqs.append((key, "!=" if op == "!=" else "=", value))
    return reqs


def _field_value(obj: Mapping[str, Any], key: str) -> str:
    section, _, name = key.partition(".")
    value = (obj.get(section) or {}).get(name)
    return value if isinstance(value, str) else ""


def _fields_match(sel: list[tuple[str, str, str]] | None, obj: Mapping[str, Any] | None) -> bool:
    if obj is None:
        return False
    if sel is None:
        return True
    return all((_field_value(obj, k) == v) == (op == "=") for k, op, v in sel)


# -- content negotiation --------------------------------------------------------------------------


@dataclass(frozen=True)
class Media:
    """What a response is rendered as, picked from the request's ``Accept`` header."""

    kind: str  # json | table | partial | partiallist | discovery
    version: str = ""  # of meta.k8s.io (table, partial*) or apidiscovery.k8s.io (discovery)


JSON = Media("json")
_META = "meta.k8s.io"
_RESOURCE_CONVERSIONS = {
    (_META, v, kind): Media(m, v)
    for v in ("v1", "v1beta1")
    for kind, m in (
        ("Table", "table"),
        ("PartialObjectMetadata", "partial"),
        ("PartialObjectMetadataList", "partiallist"),
    )
}
_DISCOVERY_CONVERSIONS = {
    ("apidiscovery.k8s.io", v, "APIGroupDiscoveryList"): Media("discovery", v)
    for v in ("v2", "v2beta1")
}


def negotiate(
    accept: str | None, conversions: Mapping[tuple[str, str, str], Media]
) -> Media | None:
    """The first acceptable media range (by ``q``, then order); ``None``: answer 406.

    A range naming a conversion the endpoint cannot do is skipped, as the real server
    does, so ``as=Table...,application/json`` falls back to plain JSON elsewhere.
    """
    ranges: list[tuple[float, int, str, dict[str, str]]] = []
    for i, part in enumerate((accept or "").split(",")):
        base, *params = (x.strip() for x in part.split(";"))
        if not base:
            continue
        p = {}
        for x in params:
            k, _, v = x.partition("=")
            p[k.strip().lower()] = v.strip().strip('"')
        try:
            q = float(p.pop("q", "1"))
        except ValueError:
            q = 0.0
        if q > 0:
            ranges.append((-q, i, base.lower(), p))
    if not ranges:
        return JSON
    for _, _, base, p in sorted(ranges):
        if base not in ("application/json", "application/*", "*/*"):
            continue  # protobuf, yaml, cbor: this fake speaks JSON only
        target = (p.get("g", ""), p.get("v", ""), p.get("as", ""))
        if target == ("", "", ""):
            return JSON
        if target in conversions:
            return conversions[target]
    return None


def _not_acceptable() -> web.Response:
    return _json(
        406,
        status_object(
            406, "NotAcceptable", "only the following media types are accepted: application/json"
        ),
    )


# -- server-side printing (pkg/printers/internalversion, as the API server runs it) ---------------


def _column(name: str, description: str, priority: int = 0, type: str = "string") -> dict[str, Any]:
    return {
        "name": name,
        "type": type,
        "format": "name" if name == "Name" else "",
        "description": description,
        "priority": priority,
    }


_NAME_DOC = (
    "Name must be unique within a namespace. Is required when creating resources, although "
    "some resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated. More info: "
    "https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names"
)
_AGE_DOC = (
    "CreationTimestamp is a timestamp representing the server time when this object was "
    "created. It is not guaranteed to be set in happens-before order across separate "
    "operations. Clients may not set this value. It is represented in RFC3339 form and is in "
    "UTC.\n\nPopulated by the system. Read-only. Null for lists. More info: "
    "https://git.k8s.io/community/contributors/devel/sig-architecture/api-conventions.md#metadata"
)
COLUMNS: dict[str, list[dict[str, Any]]] = {
    SERVICES: [
        _column("Name", _NAME_DOC),
        _column("Type", "type determines how the Service is exposed. Defaults to ClusterIP."),
        _column("Cluster-IP", "clusterIP is the IP address of the service."),
        _column(
            "External-IP",
            "externalIPs is a list of IP addresses for which nodes in the "
            "cluster will also accept traffic for this service.",
        ),
        _column("Port(s)", "The list of ports that are exposed by this service."),
        _column("Age", _AGE_DOC),
        _column(
            "Selector",
            "Route service traffic to pods with label keys and values matching this selector.",
            priority=1,
        ),
    ],
    ENDPOINTSLICES: [
        _column("Name", _NAME_DOC),
        _column(
            "AddressType",
            "addressType specifies the type of address carried by this EndpointSlice.",
        ),
        _column(
            "Ports",
            "ports specifies the list of network ports exposed by each endpoint in this slice.",
        ),
        _column("Endpoints", "endpoints is a list of unique endpoints in this slice."),
        _column("Age", _AGE_DOC),
    ],
    # A CRD without additionalPrinterColumns: apiextensions' default, Name and a date Age.
    SERVICEEXPORTS: [_column("Name", _NAME_DOC), _column("Age", _AGE_DOC, type="date")],
    "namespaces": [
        _column("Name", _NAME_DOC),
        _column("Status", "The status of the namespace"),
        _column("Age", _AGE_DOC),
    ],
}


def human_duration(seconds: float) -> str:
    """apimachinery's duration.HumanDuration: what the Age column says."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d{hours % 24}h" if hours % 24 else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        dy = (hours // 24) % 365
        return f"{hours // 24 // 365}y{dy}d" if dy else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def _age(obj: Mapping[str, Any], now: float) -> str:
    ts = (obj.get("metadata") or {}).get("creationTimestamp")
    if not ts:
        return "<unknown>"
    return human_duration(now - datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp())


def _more(items: list[str], count: int) -> str:
    # printers.go listWithMoreString, at most 3 shown
    ret = ",".join(items[:3])
    if count > 3:
        return f"{ret} + {count - 3} more..."
    return ret or "<unset>"


def _external_ip(svc: Mapping[str, Any]) -> str:
    spec = svc.get("spec") or {}
    external = list(spec.get("externalIPs") or [])
    typ = spec.get("type")
    if typ in ("ClusterIP", "NodePort"):
        return ",".join(external) or "<none>"
    if typ == "LoadBalancer":
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        lb = sorted({i.get("ip") or i.get("hostname") for i in ingress} - {None, ""})
        if external:
            return ",".join(lb + external)
        return ",".join(lb) or "<pending>"
    if typ == "ExternalName":
        return str(spec.get("externalName", ""))
    return "<unknown>"


def _cells(resource: str, obj: Mapping[str, Any], now: float) -> list[Any]:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if resource == SERVICES:
        spec = obj.get("spec") or {}
        ips = spec.get("clusterIPs") or []
        ports = ",".join(
            f"{p.get('port')}:{p['nodePort']}/{p.get('protocol', '')}"
            if p.get("nodePort")
            else f"{p.get('port')}/{p.get('protocol', '')}"
            for p in spec.get("ports") or []
        )
        selector = spec.get("selector") or {}
        return [
            name,
            spec.get("type", ""),
            ips[0] if ips else "<none>",
            _external_ip(obj),
            ports or "<none>",
            _age(obj, now),
            ",".join(f"{k}={v}" for k, v in sorted(selector.items())) or "<none>",
        ]
    if resource == ENDPOINTSLICES:
        ports = [
            str(p["port"]) if p.get("port") is not None else p.get("name") or "*"
            for p in obj.get("ports") or []
        ]
        addrs = [a for e in obj.get("endpoints") or [] for a in e.get("addresses") or []]
        return [
            name,
            obj.get("addressType", ""),
            _more(ports, len(ports)),
            _more(addrs, len(addrs)),
            _age(obj, now),
        ]
    if resource == "namespaces":
        return [name, (obj.get("status") or {}).get("phase", ""), _age(obj, now)]
    return [name, meta.get("creationTimestamp")]


def _partial(obj: Mapping[str, Any], version: str) -> dict[str, Any]:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"{_META}/{version}",
        "metadata": obj.get("metadata") or {},
    }


_INCLUDE = ("", "Metadata", "None", "Object")


def table(
    resource: str,
    objs: Iterable[Mapping[str, Any]],
    list_meta: Mapping[str, Any],
    version: str = "v1",
    include: str = "",
    headers: bool = True,
) -> dict[str, Any]:
    """A meta.k8s.io Table as the API server's TableConvertor builds it (wide, all columns)."""
    api_version, kind = RESOURCES[resource][1:] if resource in RESOURCES else ("v1", "Namespace")
    now = time.time()
    rows = []
    for o in objs:
        if include == "Object":
            row_obj: Any = {"kind": kind, "apiVersion": api_version, **o}
        elif include == "None":
            row_obj = None
        else:
            row_obj = _partial(o, version)
        rows.append({"cells": _cells(resource, o, now), "object": row_obj})
    return {
        "kind": "Table",
        "apiVersion": f"{_META}/{version}",
        "metadata": dict(list_meta),
        "columnDefinitions": COLUMNS[resource] if headers else None,
        "rows": rows,
    }


# -- continue tokens (storage/continue.go: base64url of {"v","rv","start"}) -----------------------


def _encode_continue(rv: int, start: str) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_continue(token: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except ValueError:
        raise ValueError("continue key is not valid: illegal base64 data") from None
    if not isinstance(data, dict) or data.get("v") != "meta.k8s.io/v1":
        raise ValueError("continue key is not valid: server does not recognize this encoding")
    rv, start = data.get("rv"), data.get("start")
    if not isinstance(rv, int) or rv == 0:
        raise ValueError(
            "continue key is not valid: incorrect encoded start resourceVersion (version meta.k8s.io/v1)"
        )
    if not isinstance(start, str) or not start:
        raise ValueError(
            "continue key is not valid: encoded start key empty (version meta.k8s.io/v1)"
        )
    return rv, start


def _key(ident: tuple[str, str]) -> str:
    # etcd orders by key, /registry/<resource>/<namespace>/<name>: lists come out in this order
    return f"{ident[0]}/{ident[1]}"


_CONTINUE_EXPIRED = (
    "The provided continue parameter is too old to display a consistent list result. You can "
    "start a new list without the continue parameter, or use the continue token in this "
    "response to retrieve the remainder of the results. Continuing with the provided token "
    "results in an inconsistent list - objects that were created, modified, or deleted "
    "between the time the first chunk was returned and now may show up in the list."
)


def _list_options_errors(q: Mapping[str, str], watching: bool) -> list[tuple[str, str, str]]:
    """metainternalversion/validation.ValidateListOptions, for a server without WatchList."""
    errs: list[tuple[str, str, str]] = []  # (field, type, detail)
    match, rv, cont = (
        q.get(k, "") for k in ("resourceVersionMatch", "resourceVersion", "continue")
    )
    initial = q.get("sendInitialEvents")
    if watching:
        if initial is not None:
            if match != "NotOlderThan":
                errs.append(
                    (
                        "resourceVersionMatch",
                        "Forbidden",
                        "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan",
                    )
                )
            errs.append(
                (
                    "sendInitialEvents",
                    "Forbidden",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature "
                    "gate is enabled",
                )
            )
        if match:
            if initial is None:
                errs.append(
                    (
                        "resourceVersionMatch",
                        "Forbidden",
                        "resourceVersionMatch is forbidden for watch unless sendInitialEvents "
                        "is provided",
                    )
                )
            if match != "NotOlderThan":
                errs.append(
                    (
                        "resourceVersionMatch",
                        "Unsupported value",
                        f'"{match}": supported values: "NotOlderThan"',
                    )
                )
            if cont:
                errs.append(
                    (
                        "resourceVersionMatch",
                        "Forbidden",
                        "resourceVersionMatch is forbidden when continue is provided",
                    )
                )
        return errs
    if match:
        if not rv:
            errs.append(
                (
                    "resourceVersionMatch",
                    "Forbidden",
                    "resourceVersionMatch is forbidden unless resourceVersion is provided",
                )
            )
        if cont:
            errs.append(
                (
                    "resourceVersionMatch",
                    "Forbidden",
                    "resourceVersionMatch is forbidden when continue is provided",
                )
            )
        if match not in ("Exact", "NotOlderThan"):
            errs.append(
                (
                    "resourceVersionMatch",
                    "Unsupported value",
                    f'"{match}": supported values: "Exact", "NotOlderThan", ""',
                )
            )
        if match == "Exact" and rv == "0":
            errs.append(
                (
                    "resourceVersionMatch",
                    "Forbidden",
                    'resourceVersionMatch "exact" is forbidden for resourceVersion "0"',
                )
            )
    if initial is not None:
        errs.append(("sendInitialEvents", "Forbidden", "sendInitialEvents is forbidden for list"))
    return errs


def _invalid_list_options(errs: list[tuple[str, str, str]]) -> web.Response:
    texts = [f"{f}: {t}: {d}" for f, t, d in errs]
    detail = texts[0] if len(texts) == 1 else "[" + ", ".join(texts) + "]"
    reason = {"Forbidden": "FieldValueForbidden", "Unsupported value": "FieldValueNotSupported"}
    return _json(
        422,
        status_object(
            422,
            "Invalid",
            f'ListOptions.meta.k8s.io "" is invalid: {detail}',
            group="meta.k8s.io",
            kind="ListOptions",
            causes=[{"reason": reason[t], "message": f"{t}: {d}", "field": f} for f, t, d in errs],
        ),
    )


# -- object builders -------------------------------------------------------------------------


def service(
    namespace: str,
    name: str,
    ports: Iterable[tuple[str, int, str]] = (("http", 80, "TCP"),),
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
    lb_ips: Iterable[str] = (),
    type: str | None = None,
) -> dict[str, Any]:
    lb = list(lb_ips)
    svc: dict[str, Any] = {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {
            "type": type or ("LoadBalancer" if lb else "ClusterIP"),
            "clusterIP": "10.96.0.10",
            "ports": [
                {"name": n, "port": p, "protocol": proto, "targetPort": p} for n, p, proto in ports
            ],
            "selector": {"app": name},
        },
        "status": {"loadBalancer": {"ingress": [{"ip": ip} for ip in lb]} if lb else {}},
    }
    if labels:
        svc["metadata"]["labels"] = dict(labels)
    if annotations:
        svc["metadata"]["annotations"] = dict(annotations)
    return svc


def endpoint(
    address: str | Iterable[str],
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
    hostname: str | None = None,
    zone: str | None = None,
    node: str | None = None,
    pod: str | None = None,
) -> dict[str, Any]:
    conditions: dict[str, Any] = {}
    if ready is not None:
        conditions["ready"] = ready
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    ep: dict[str, Any] = {
        "addresses": [address] if isinstance(address, str) else list(address),
        "conditions": conditions,
    }
    if hostname:
        ep["hostname"] = hostname
    if zone:
        ep["zone"] = zone
    if node:
        ep["nodeName"] = node
    if pod:
        ep["targetRef"] = {"kind": "Pod", "namespace": "", "name": pod}
    return ep


def endpoint_slice(
    namespace: str,
    name: str,
    service_name: str | None,
    endpoints: Iterable[dict[str, Any]],
    ports: Iterable[tuple[str, int, str]] = (("http", 8080, "TCP"),),
    address_type: str = "IPv4",
) -> dict[str, Any]:
    labels = {"endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}
    if service_name is not None:
        labels["kubernetes.io/service-name"] = service_name
    eps = []
    for e in endpoints:
        e = json.loads(json.dumps(e))
        if "targetRef" in e:
            e["targetRef"]["namespace"] = namespace
        eps.append(e)
    return {
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
        "addressType": address_type,
        "endpoints": eps,
        "ports": [{"name": n, "port": p, "protocol": proto} for n, p, proto in ports],
    }


def service_export(namespace: str, name: str) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": {}}


def _default_service(svc: dict[str, Any]) -> None:
    """What the API server's defaulting adds on create (kubectl's printer reads clusterIPs)."""
    spec = svc.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    if spec.get("clusterIP") and "clusterIPs" not in spec:
        spec["clusterIPs"] = [spec["clusterIP"]]


# -- the server ----------------------------------------------------------------------------------


@dataclass
class Fault:
    action: str  # http500 http429 html502 http410 gone drop stall close
    resource: str | None = None  # None: any
    op: str = "watch"  # watch | list | any
    times: int = 1
    after: int = 0  # drop/gone/close: after this many events of the stream
    retry_after: int = 1


@dataclass
class _Event:
    rv: int
    resource: str
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


@dataclass
class _Watcher:
    resource: str
    namespace: str | None
    selector: list[tuple[str, str, set[str]]] | None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    delivered: int = 0  # every event of this resource up to here has been written
    fields: list[tuple[str, str, str]] | None = None  # a fieldSelector

    def sees(self, obj: Mapping[str, Any] | None) -> bool:
        return _matches(self.selector, obj) and _fields_match(self.fields, obj)

    def bookmark_rv(self, current: int) -> int:
        # Safe like the real watch cache: never past an event still queued for this stream.
        return current if self.queue.empty() else self.delivered


class FakeKube:
    def __init__(
        self,
        name: str = "fake",
        *,
        bookmark_interval: float = 0.2,
        expired_as_http: bool = False,
        serve_exports: bool = True,
        default_watch_timeout: float = 1800.0,
        aggregated_discovery: bool = True,
        rbac_namespaces: Iterable[str] | None = None,
    ) -> None:
        self.name = name
        # RBAC of a namespace-scoped account (Roles, no ClusterRole): lists and
        # watches only inside these namespaces; anything else is 403, as the real
        # authorizer answers. None: allowed everywhere.
        self.rbac_namespaces = frozenset(rbac_namespaces) if rbac_namespaces is not None else None
        self.aggregated_discovery = aggregated_discovery
        self.bookmark_interval = bookmark_interval
        self.expired_as_http = expired_as_http
        self.serve_exports = serve_exports
        self.default_watch_timeout = default_watch_timeout
        self.rv = 1
        self.compacted = 0  # watching from an RV below this is 410
        self.store: dict[str, dict[tuple[str, str], dict[str, Any]]] = {r: {} for r in RESOURCES}
        self.history: list[_Event] = []
        self.faults: list[Fault] = []
        self.watchers: list[_Watcher] = []
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.request_log: list[dict[str, Any]] = []  # every request, discovery included
        self.down_flag = False
        self._uid = 0
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._streams: set[asyncio.Task[Any]] = set()  # handlers of open watches / stalled lists
        self.host = "127.0.0.1"
        self.port = 0

    # -- lifecycle --------------------------------------------------------------------

    async def start(self, port: int = 0) -> FakeKube:
        @web.middleware
        async def record(request: web.Request, handler: Any) -> web.StreamResponse:
            h = request.headers
            self.request_log.append(
                {
                    "method": request.method,
                    "path": request.path,
                    "query": dict(request.query),
                    "accept": h.get("Accept", ""),
                    "user_agent": h.get("User-Agent", ""),
                }
            )
            return await handler(request)

        app = web.Application(middlewares=[record])
        app.router.add_get("/version", self._version)
        app.router.add_get("/version/", self._version)
        for res, (prefix, _, _) in RESOURCES.items():
            app.router.add_get(f"{prefix}/{res}", self._handler(res))
            app.router.add_get(f"{prefix}/namespaces/{{ns}}/{res}", self._handler(res))
            app.router.add_get(f"{prefix}/namespaces/{{ns}}/{res}/{{name}}", self._get_one(res))
        app.router.add_get("/api/v1/namespaces/{ns}", self._namespace)
        app.router.add_get("/api/v1/namespaces", self._not_allowed)  # discovery says: get only
        # Discovery, as kubectl (client-go's discovery client) walks it.
        for path, handler in (
            ("/api", self._disc_api),
            ("/apis", self._disc_apis),
            ("/api/{version}", self._disc_version),
            ("/apis/{group}", self._disc_group),
            ("/apis/{group}/{version}", self._disc_version),
        ):
            app.router.add_get(path, handler)
            app.router.add_get(path + "/", handler)
        # The fake's own control API, for drivers in another process (benchmarks).
        app.router.add_post("/_fake/apply", self._ctl_apply)
        app.router.add_post("/_fake/delete", self._ctl_delete)
        # Anything else: the real server's 404 is a Status object, not an HTML page.
        app.router.add_route("*", "/{tail:.*}", self._not_found)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await self._runner.setup()
        await self._listen(port)
        return self

    async def _listen(self, port: int) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, self.host, port, reuse_address=True)
        await self._site.start()
        server = self._site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    async def close(self) -> None:
        self._cut_all()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def down(self) -> None:
        """The API server goes away: open connections cut, new ones refused."""
        self.down_flag = True
        self._cut_all()
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def up(self) -> None:
        """Back on the same port."""
        if self._site is None:
            await self._listen(self.port)
        self.down_flag = False

    def _cut_all(self) -> None:
        for t in list(self._transports):
            t.abort()
        for task in list(self._streams):
            task.cancel()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def kubeconfig_entry(self) -> tuple[str, str]:
        return self.name, self.url

    # -- state changes ------------------------------------------------------------------

    def _bump(self) -> int:
        self.rv += 1
        return self.rv

    def apply(self, resource: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Create or replace an object (as kubectl apply would); emits ADDED or MODIFIED."""
        _, api_version, kind = RESOURCES[resource]
        obj = json.loads(json.dumps(obj))
        meta = obj.setdefault("metadata", {})
        ident = (meta["namespace"], meta["name"])
        old = self.store[resource].get(ident)
        rv = self._bump()
        if old is None:
            self._uid += 1
            meta["uid"] = f"{self.name}-{self._uid:08d}"
            meta["creationTimestamp"] = "2024-01-01T00:00:00Z"
            meta["generation"] = 1
        else:
            meta["uid"] = old["metadata"]["uid"]
            meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        meta["resourceVersion"] = str(rv)
        obj["kind"], obj["apiVersion"] = kind, api_version
        if resource == SERVICES:
            _default_service(obj)
        self.store[resource][ident] = obj
        self._emit(_Event(rv, resource, "MODIFIED" if old else "ADDED", obj, old))
        return obj

    def delete(self, resource: str, namespace: str, name: str) -> bool:
        old = self.store[resource].pop((namespace, name), None)
        if old is None:
            return False
        rv = self._bump()
        gone = json.loads(json.dumps(old))
        gone["metadata"]["resourceVersion"] = str(rv)
        self._emit(_Event(rv, resource, "DELETED", gone, old))
        return True

    def state_at(self, resource: str, rv: int) -> dict[tuple[str, str], dict[str, Any]] | None:
        """The objects as they were at ``rv`` (an etcd read at a revision); None once compacted."""
        if rv < self.compacted:
            return None
        state = dict(self.store[resource])
        for ev in reversed(self.history):
            if ev.rv <= rv:
                break
            if ev.resource != resource:
                continue
            ident = (ev.obj["metadata"]["namespace"], ev.obj["metadata"]["name"])
            if ev.type == "ADDED":
                state.pop(ident, None)
            elif ev.old is not None:
                state[ident] = ev.old
        return state

    def compact(self) -> int:
        """Forget history: a watch from an RV before now gets 410 Expired."""
        self.compacted = self.rv
        self.history.clear()
        return self.compacted

    def _emit(self, ev: _Event) -> None:
        self.history.append(ev)
        for w in self.watchers:
            if w.resource == ev.resource:
                w.queue.put_nowait(ev)

    # conveniences
    def put_service(self, namespace: str, name: str, **kw: Any) -> dict[str, Any]:
        return self.apply(SERVICES, service(namespace, name, **kw))

    def put_slice(
        self,
        namespace: str,
        name: str,
        service_name: str | None,
        endpoints: Iterable[dict[str, Any]],
        **kw: Any,
    ) -> dict[str, Any]:
        return self.apply(
            ENDPOINTSLICES, endpoint_slice(namespace, name, service_name, endpoints, **kw)
        )

    def put_export(self, namespace: str, name: str) -> dict[str, Any]:
        return self.apply(SERVICEEXPORTS, service_export(namespace, name))

    def objects(self, resource: str) -> list[dict[str, Any]]:
        return [self.store[resource][k] for k in sorted(self.store[resource])]

    # -- faults ----------------------------------------------------------------------------

    def inject(
        self,
        action: str,
        resource: str | None = None,
        op: str = "watch",
        times: int = 1,
        after: int = 0,
        retry_after: int = 1,
    ) -> Fault:
        f = Fault(action, resource, op, times, after, retry_after)
        self.faults.append(f)
        return f

    def _take_fault(self, resource: str, op: str) -> Fault | None:
        for f in self.faults:
            if (f.resource in (None, resource)) and f.op in ("any", op):
                f.times -= 1
                if f.times <= 0:
                    self.faults.remove(f)
                return f
        return None

    def drop_watches(self, resource: str | None = None) -> int:
        return self._signal(("drop",), resource)

    def stall_watches(self, resource: str | None = None) -> int:
        return self._signal(("stall",), resource)

    def error_watches(self, code: int = 410, resource: str | None = None) -> int:
        return self._signal(("error", code), resource)

    def _signal(self, msg: tuple[Any, ...], resource: str | None) -> int:
        n = 0
        for w in self.watchers:
            if resource in (None, w.resource):
                w.queue.put_nowait(msg)
                n += 1
        return n

    def open_watches(self, resource: str | None = None) -> int:
        return sum(1 for w in self.watchers if resource in (None, w.resource))

    async def watching(
        self, n: int = 2, resource: str | None = None, timeout: float = 10.0
    ) -> None:
        """Wait until at least ``n`` watch streams are open (so faults on open streams hit them)."""
        end = time.monotonic() + timeout
        while self.open_watches(resource) < n:
            if time.monotonic() > end:
                raise AssertionError(f"{self.name}: fewer than {n} open watches")
            await asyncio.sleep(0.005)

    # -- HTTP ---------------------------------------------------------------------------------

    def _track(self, request: web.Request) -> asyncio.BaseTransport | None:
        task = asyncio.current_task()
        if task is not None:
            self._streams.add(task)
            task.add_done_callback(self._streams.discard)
        t = request.transport
        if t is not None:
            self._transports.add(t)
        return t

    async def _version(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        self.requests.append(("GET", request.path, dict(request.query)))
        return web.json_response(
            {
                "major": "1",
                "minor": "30",
                "gitVersion": "v1.30.0-fake",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2024-01-01T00:00:00Z",
                "goVersion": "go1.22.0",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        )

    def _abort(self, request: web.Request) -> web.StreamResponse:
        # A dead server says nothing: cut the connection; the response goes nowhere.
        if request.transport is not None:
            request.transport.abort()
        return web.Response(status=503)

    def _handler(self, resource: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if self.down_flag:
                return self._abort(request)
            if resource == SERVICEEXPORTS and not self.serve_exports:
                return _json(
                    404,
                    status_object(
                        404, "NotFound", "the server could not find the requested resource"
                    ),
                )
            q = request.query
            self.requests.append(("GET", request.path, dict(q)))
            w = q.get("watch")
            if w is not None and w not in _TRUE | _FALSE:
                return _json(400, status_object(400, "BadRequest", f"invalid watch value {w!r}"))
            try:
                sel = _selector(q.get("labelSelector"))
                fields = _field_selector(resource, q.get("fieldSelector"))
            except ValueError as e:
                return _json(400, status_object(400, "BadRequest", str(e)))
            watching = w in _TRUE
            media = negotiate(request.headers.get("Accept"), _RESOURCE_CONVERSIONS)
            if media is None:
                return _not_acceptable()
            bad = self._table_options_error(media, q)
            if bad is not None:
                return bad
            errs = _list_options_errors(q, watching)
            if errs:
                return _invalid_list_options(errs)
            ns = request.match_info.get("ns")
            if self.rbac_namespaces is not None and ns not in self.rbac_namespaces:
                return _forbidden(resource, "watch" if watching else "list", ns)
            if watching:
                return await self._watch(request, resource, ns, sel, fields, media)
            return await self._list(request, resource, ns, sel, fields, media)

        return handle

    @staticmethod
    def _table_options_error(media: Media, q: Mapping[str, str]) -> web.Response | None:
        include = q.get("includeObject", "")
        if media.kind != "table" or include in _INCLUDE:
            return None
        return _json(
            400,
            status_object(
                400,
                "BadRequest",
                "Unable to convert to Table as requested: includeObject: Unsupported value: "
                f'"{include}": supported values: "Metadata", "None", "Object"',
            ),
        )

    def _render_one(
        self, resource: str, obj: dict[str, Any], media: Media, q: Mapping[str, str], first: bool
    ) -> Any:
        """One object (a get, a watch event's) in the negotiated form."""
        if media.kind == "table":
            meta = {"resourceVersion": obj.get("metadata", {}).get("resourceVersion", "")}
            return table(
                resource, [obj], meta, media.version, q.get("includeObject", ""), headers=first
            )
        if media.kind == "partial":
            return _partial(obj, media.version)
        return obj

    def _get_one(self, resource: str) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            if self.down_flag:
                return self._abort(request)
            name = request.match_info["name"]
            obj = self.store[resource].get((request.match_info["ns"], name))
            if obj is None:
                return _json(
                    404,
                    status_object(
                        404,
                        "NotFound",
                        f'{resource} "{name}" not found',
                        name=name,
                        **({"group": g} if (g := _gv(RESOURCES[resource][1])[0]) else {}),
                        kind=resource,
                    ),
                )
            media = negotiate(request.headers.get("Accept"), _RESOURCE_CONVERSIONS)
            if media is None or media.kind == "partiallist":
                return _not_acceptable()
            bad = self._table_options_error(media, request.query)
            if bad is not None:
                return bad
            return _json(200, self._render_one(resource, obj, media, request.query, True))

        return handle

    async def _fault_response(self, request: web.Request, f: Fault) -> web.StreamResponse | None:
        if f.action == "http500":
            return _json(
                500, status_object(500, "InternalError", "Internal error occurred: fake fault")
            )
        if f.action == "http429":
            r = _json(
                429,
                status_object(
                    429,
                    "TooManyRequests",
                    "too many requests, please try again later",
                    retryAfterSeconds=f.retry_after,
                ),
            )
            r.headers["Retry-After"] = str(f.retry_after)
            return r
        if f.action == "html502":
            return web.Response(status=502, body=HTML_502, content_type="text/html")
        if f.action == "http410":
            return _json(410, status_object(410, "Expired", "too old resource version: fake fault"))
        return None

    async def _list(
        self,
        request: web.Request,
        resource: str,
        ns: str | None,
        sel: Any,
        fields: list[tuple[str, str, str]] | None = None,
        media: Media = JSON,
    ) -> web.StreamResponse:
        f = self._take_fault(resource, "list")
        if f is not None:
            r = await self._fault_response(request, f)
            if r is not None:
                return r
            if f.action == "drop":
                return self._abort(request)
            if f.action == "stall":
                with contextlib.suppress(ConnectionError):
                    await self._stall(self._track(request))
                return web.Response(status=503)  # nobody is listening any more
        if media.kind == "partial":
            return _json(
                406,
                status_object(
                    406,
                    "NotAcceptable",
                    "you requested PartialObjectMetadata, but the requested object is a list",
                ),
            )
        page = self._page(request.query, resource, ns, sel, fields)
        if isinstance(page, web.Response):
            return page
        objs, meta = page
        _, api_version, kind = RESOURCES[resource]
        if media.kind == "table":
            body = table(
                resource, objs, meta, media.version, request.query.get("includeObject", "")
            )
        elif media.kind == "partiallist":
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": f"{_META}/{media.version}",
                "metadata": meta,
                "items": [_partial(o, media.version) for o in objs],
            }
        else:
            items = []
            for obj in objs:
                item = dict(obj)
                item.pop("kind", None)  # list items carry no kind/apiVersion
                item.pop("apiVersion", None)
                items.append(item)
            body = {
                "kind": f"{kind}List",
                "apiVersion": api_version,
                "metadata": meta,
                "items": items,
            }
        return _json(200, body)

    def _page(
        self,
        q: Mapping[str, str],
        resource: str,
        ns: str | None,
        sel: Any,
        fields: list[tuple[str, str, str]] | None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]] | web.Response:
        """Which objects a list returns, and its ListMeta (the storage layer's GetList)."""
        rv_s, match, cont = (
            q.get(k, "") for k in ("resourceVersion", "resourceVersionMatch", "continue")
        )
        try:
            limit = int(q.get("limit", "0") or "0")
        except ValueError:
            return _json(400, status_object(400, "BadRequest", f"invalid limit {q['limit']!r}"))
        if rv_s not in ("", "0"):
            try:
                int(rv_s)
            except ValueError:
                return _json(
                    400, status_object(400, "BadRequest", f"invalid resourceVersion {rv_s!r}")
                )
        start = ""
        at: int | None = None  # None: the current state, unpaged
        if cont:
            if rv_s not in ("", "0"):
                return _json(
                    400,
                    status_object(
                        400,
                        "BadRequest",
                        "specifying resource version is not allowed when using continue",
                    ),
                )
            try:
                at, start = _decode_continue(cont)
            except ValueError as e:
                return _json(400, status_object(400, "BadRequest", str(e)))
            if at == -1:  # an inconsistent token handed out with a 410: the latest state
                at = self.rv
        elif match == "Exact" or (rv_s not in ("", "0") and limit > 0 and match == ""):
            at = int(rv_s)  # legacy: a non-zero resourceVersion with a limit is an Exact read
        elif limit > 0 and rv_s != "0":
            # a paged read from etcd at the latest revision: consistent ("") or NotOlderThan N
            at = self.rv if rv_s == "" or int(rv_s) <= self.rv else int(rv_s)
        # resourceVersion "0" (the watch cache) and NotOlderThan: the current state, limit ignored
        if at is None:
            state, limit, at_rv = self.store[resource], 0, self.rv
        else:
            if at > self.rv:
                return _json(
                    504,
                    status_object(
                        504,
                        "Timeout",
                        f"Too large resource version: {at}, current: {self.rv}",
                        causes=[
                            {
                                "reason": "ResourceVersionTooLarge",
                                "message": "Too large resource version",
                            }
                        ],
                        retryAfterSeconds=1,
                    ),
                )
            snap = self.state_at(resource, at)
            if snap is None:
                if cont:
                    st = status_object(410, "Expired", _CONTINUE_EXPIRED)
                    st["metadata"] = {"continue": _encode_continue(-1, start)}
                    return _json(410, st)
                return _json(
                    410,
                    status_object(
                        410, "Expired", "The resourceVersion for the provided list is too old."
                    ),
                )
            state, at_rv = snap, at
        matched = [
            (_key(ident), obj)
            for ident, obj in sorted(state.items(), key=lambda kv: _key(kv[0]))
            if (ns is None or ident[0] == ns)
            and _key(ident) >= start
            and _matches(sel, obj)
            and _fields_match(fields, obj)
        ]
        meta: dict[str, Any] = {"resourceVersion": str(at_rv)}
        if limit > 0 and len(matched) > limit:
            meta["continue"] = _encode_continue(at_rv, matched[limit - 1][0] + "\x00")
            if sel is None and fields is None:
                meta["remainingItemCount"] = len(matched) - limit
            matched = matched[:limit]
        return [obj for _, obj in matched], meta

    def _translate(self, w: _Watcher, ev: _Event) -> tuple[str, dict[str, Any]] | None:
        """What this watcher sees of an event: label selections turn into ADDED/DELETED."""
        ons = ev.obj["metadata"]["namespace"]
        if w.namespace is not None and ons != w.namespace:
            return None
        if ev.type == "DELETED":
            return ("DELETED", ev.obj) if w.sees(ev.old) else None
        now, before = w.sees(ev.obj), w.sees(ev.old)
        if now and before:
            return ("MODIFIED", ev.obj)
        if now:
            return ("ADDED", ev.obj)
        if before:
            return ("DELETED", ev.obj)
        return None

    async def _watch(
        self,
        request: web.Request,
        resource: str,
        ns: str | None,
        sel: Any,
        fields: list[tuple[str, str, str]] | None = None,
        media: Media = JSON,
    ) -> web.StreamResponse:
        q = request.query
        if media.kind == "partiallist":
            return _not_acceptable()
        f = self._take_fault(resource, "watch")
        if f is not None:
            r = await self._fault_response(request, f)
            if r is not None:
                return r
        bookmarks = q.get("allowWatchBookmarks", "false") in _TRUE
        try:
            timeout = float(q.get("timeoutSeconds", self.default_watch_timeout))
        except ValueError:
            return _json(400, status_object(400, "BadRequest", "invalid timeoutSeconds"))
        rv_s = q.get("resourceVersion", "")
        w = _Watcher(resource, ns, sel, fields=fields)
        backlog: list[tuple[str, dict[str, Any]]] = []
        expired = False
        if rv_s in ("", "0"):
            for (ons, _), obj in sorted(self.store[resource].items(), key=lambda kv: _key(kv[0])):
                if (ns is None or ons == ns) and w.sees(obj):
                    backlog.append(("ADDED", obj))
        else:
            try:
                since = int(rv_s)
            except ValueError:
                return _json(
                    400, status_object(400, "BadRequest", f"invalid resourceVersion {rv_s!r}")
                )
            if since < self.compacted:
                expired = True
                if self.expired_as_http:
                    return _json(
                        410,
                        status_object(
                            410, "Expired", f"too old resource version: {since} ({self.compacted})"
                        ),
                    )
            else:
                for ev in self.history:
                    if ev.rv > since and ev.resource == resource:
                        t = self._translate(w, ev)
                        if t is not None:
                            backlog.append(t)
        # Registered in the same step as the backlog was taken: no event can fall between.
        if not expired:
            self.watchers.append(w)
            w.delivered = self.rv
        transport = self._track(request)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        sent = 0
        rendered = 0

        def enc(obj: dict[str, Any]) -> Any:
            # A Table watch sends the column definitions with the first event only.
            nonlocal rendered
            rendered += 1
            return self._render_one(resource, obj, media, q, rendered == 1)

        try:
            await resp.prepare(request)
            if expired:
                await self._line(
                    resp,
                    {
                        "type": "ERROR",
                        "object": status_object(
                            410, "Expired", f"too old resource version: {rv_s} ({self.compacted})"
                        ),
                    },
                )
                await resp.write_eof()
                return resp
            for typ, obj in backlog:
                if f is not None and f.action in ("drop", "gone", "close") and sent >= f.after:
                    break
                await self._line(resp, {"type": typ, "object": enc(obj)})
                sent += 1
            if f is not None and f.action == "stall":
                await self._stall(transport)  # headers sent, then silence: the client must notice
            deadline = time.monotonic() + timeout
            next_bookmark = time.monotonic() + self.bookmark_interval
            while True:
                if f is not None and f.action in ("drop", "gone", "close") and sent >= f.after:
                    if f.action == "drop":
                        await self._drop(resp, transport)
                        return resp
                    if f.action == "gone":
                        await self._line(
                            resp,
                            {
                                "type": "ERROR",
                                "object": status_object(
                                    410, "Expired", "too old resource version: fake fault"
                                ),
                            },
                        )
                    break
                now = time.monotonic()
                if now >= deadline:
                    if bookmarks:
                        await self._bookmark(resp, w, enc)
                    break
                wait = min(deadline, next_bookmark) - now if bookmarks else deadline - now
                try:
                    item = await asyncio.wait_for(w.queue.get(), timeout=max(0.0, wait))
                except TimeoutError:
                    if bookmarks and time.monotonic() >= next_bookmark:
                        await self._bookmark(resp, w, enc)
                        next_bookmark = time.monotonic() + self.bookmark_interval
                    continue
                if isinstance(item, _Event):
                    w.delivered = item.rv
                    t = self._translate(w, item)
                    if t is not None:
                        await self._line(resp, {"type": t[0], "object": enc(t[1])})
                        sent += 1
                elif item[0] == "drop":
                    await self._drop(resp, transport)
                    return resp
                elif item[0] == "stall":
                    await self._stall(transport)
                elif item[0] == "error":
                    code = item[1]
                    reason = "Expired" if code == 410 else "InternalError"
                    await self._line(
                        resp,
                        {
                            "type": "ERROR",
                            "object": status_object(code, reason, "fake fault during watch"),
                        },
                    )
                    break
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with contextlib.suppress(ValueError):
                self.watchers.remove(w)
            if transport is not None:
                self._transports.discard(transport)
        return resp

    async def _stall(self, transport: asyncio.BaseTransport | None) -> None:
        """Say nothing until the client gives up on the connection."""
        while transport is not None and not transport.is_closing():
            await asyncio.sleep(0.02)
        raise ConnectionResetError("client went away from a stalled stream")

    async def _line(self, resp: web.StreamResponse, ev: dict[str, Any]) -> None:
        await resp.write(json.dumps(ev, separators=(",", ":")).encode() + b"\n")

    async def _bookmark(self, resp: web.StreamResponse, w: _Watcher, enc: Any = None) -> None:
        _, api_version, kind = RESOURCES[w.resource]
        rv = w.bookmark_rv(self.rv)
        obj = {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": str(rv)}}
        # The real server runs a bookmark's object through the same transform as any event's.
        await self._line(resp, {"type": "BOOKMARK", "object": enc(obj) if enc else obj})

    async def _drop(
        self, resp: web.StreamResponse, transport: asyncio.BaseTransport | None
    ) -> None:
        # Half a line, then the connection goes: the worst place to be cut.
        with contextlib.suppress(ConnectionError):
            await resp.write(b'{"type":"MODIFIED","object":{"metadata":{"na')
        await asyncio.sleep(0.01)
        if transport is not None:
            transport.abort()

    # -- discovery -----------------------------------------------------------------------------

    def _served(self) -> dict[str, dict[str, list[str]]]:
        """group -> version -> resources this server serves ("" is the core group)."""
        out: dict[str, dict[str, list[str]]] = {"": {"v1": [NAMESPACES]}}
        for res, (_, api_version, _) in RESOURCES.items():
            if res == SERVICEEXPORTS and not self.serve_exports:
                continue
            g, v = _gv(api_version)
            out.setdefault(g, {}).setdefault(v, []).append(res)
        return out

    @staticmethod
    def _group_doc(group: str, versions: Iterable[str]) -> dict[str, Any]:
        vs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": vs, "preferredVersion": vs[0]}

    @staticmethod
    def _resource_doc(res: str) -> dict[str, Any]:
        info = _INFO[res]
        doc: dict[str, Any] = {
            "name": res,
            "singularName": info.singular,
            "namespaced": info.namespaced,
            "kind": info.kind,
            "verbs": list(info.verbs),
        }
        if info.short:
            doc["shortNames"] = list(info.short)
        if info.categories:
            doc["categories"] = list(info.categories)
        return doc

    def _aggregated(self, groups: Iterable[str], version: str) -> dict[str, Any]:
        """An apidiscovery.k8s.io APIGroupDiscoveryList: every group with its resources."""
        served = self._served()
        items = []
        for g in groups:
            versions = []
            for v, resources in served.get(g, {}).items():
                rs = []
                for res in resources:
                    info = _INFO[res]
                    r: dict[str, Any] = {
                        "resource": res,
                        "responseKind": {"group": g, "version": v, "kind": info.kind},
                        "scope": "Namespaced" if info.namespaced else "Cluster",
                        "singularResource": info.singular,
                        "verbs": list(info.verbs),
                    }
                    if info.short:
                        r["shortNames"] = list(info.short)
                    if info.categories:
                        r["categories"] = list(info.categories)
                    rs.append(r)
                versions.append({"version": v, "resources": rs, "freshness": "Current"})
            meta: dict[str, Any] = {"creationTimestamp": None}
            if g:
                meta["name"] = g
            items.append({"metadata": meta, "versions": versions})
        return {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {},
            "items": items,
        }

    def _discovery(self, request: web.Request, legacy: Any, groups: Iterable[str]) -> web.Response:
        conversions = _DISCOVERY_CONVERSIONS if self.aggregated_discovery else {}
        media = negotiate(request.headers.get("Accept"), conversions)
        if media is None:
            return _not_acceptable()
        if media.kind == "json":
            return _json(200, legacy)
        body = json.dumps(self._aggregated(groups, media.version)).encode()
        # aggregated/etag.go: a quoted SHA-512 ETag, 304 for a matching If-None-Match.
        etag = '"' + hashlib.sha512(body).hexdigest().upper() + '"'
        headers = {"ETag": etag, "Vary": "Accept", "Cache-Control": "public"}
        if request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers=headers)
        ctype = f"application/json;g=apidiscovery.k8s.io;v={media.version};as=APIGroupDiscoveryList"
        return web.Response(status=200, body=body, headers={**headers, "Content-Type": ctype})

    async def _disc_api(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        legacy = {
            "kind": "APIVersions",
            "versions": list(self._served().get("", {})),
            "serverAddressByClientCIDRs": [
                {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
            ],
        }
        return self._discovery(request, legacy, [""])

    async def _disc_apis(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        named = [g for g in self._served() if g]
        legacy = {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [self._group_doc(g, self._served()[g]) for g in named],
        }
        return self._discovery(request, legacy, named)

    async def _disc_group(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        g = request.match_info["group"]
        versions = self._served().get(g) if g else None
        if not versions:
            return await self._not_found(request)
        return _json(200, {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(g, versions)})

    async def _disc_version(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        g, v = request.match_info.get("group", ""), request.match_info["version"]
        if request.path.startswith("/apis/") and not g:
            return await self._not_found(request)
        resources = self._served().get(g, {}).get(v)
        if resources is None:
            return await self._not_found(request)
        doc: dict[str, Any] = {"kind": "APIResourceList"}
        if g:
            doc["apiVersion"] = "v1"  # the core group's list carries none, as the real one
        doc["groupVersion"] = f"{g}/{v}" if g else v
        doc["resources"] = [self._resource_doc(r) for r in resources]
        return _json(200, doc)

    def namespaces(self) -> set[str]:
        """The namespaces that exist: the built-in four and every one holding an object."""
        out = {"default", "kube-system", "kube-public", "kube-node-lease"}
        for objs in self.store.values():
            out.update(ns for ns, _ in objs)
        return out

    async def _namespace(self, request: web.Request) -> web.StreamResponse:
        # kubectl asks for the namespace after a 404, to say which of the two is missing.
        if self.down_flag:
            return self._abort(request)
        name = request.match_info["ns"]
        if name not in self.namespaces():
            return _json(
                404,
                status_object(
                    404, "NotFound", f'namespaces "{name}" not found', name=name, kind=NAMESPACES
                ),
            )
        obj = {
            "kind": "Namespace",
            "apiVersion": "v1",
            "metadata": {
                "name": name,
                "uid": f"{self.name}-ns-{name}",
                "resourceVersion": "1",
                "creationTimestamp": "2024-01-01T00:00:00Z",
                "labels": {"kubernetes.io/metadata.name": name},
            },
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": "Active"},
        }
        media = negotiate(request.headers.get("Accept"), _RESOURCE_CONVERSIONS)
        if media is None or media.kind == "partiallist":
            return _not_acceptable()
        bad = self._table_options_error(media, request.query)
        if bad is not None:
            return bad
        return _json(200, self._render_one(NAMESPACES, obj, media, request.query, True))

    async def _not_allowed(self, request: web.Request) -> web.StreamResponse:
        return _json(
            405,
            status_object(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        )

    async def _not_found(self, request: web.Request) -> web.StreamResponse:
        if self.down_flag:
            return self._abort(request)
        return _json(
            404,
            status_object(404, "NotFound", "the server could not find the requested resource"),
        )

    # -- control API for out-of-process drivers --------------------------------------------

    async def _ctl_apply(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        for item in body["items"]:
            self.apply(item["resource"], item["object"])
        return web.json_response({"rv": self.rv, "t": time.monotonic()})

    async def _ctl_delete(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        ok = self.delete(body["resource"], body["namespace"], body["name"])
        return web.json_response({"deleted": ok, "rv": self.rv, "t": time.monotonic()})


NAMESPACES = "namespaces"  # served read-only, synthesized: see FakeKube.namespaces


@dataclass(frozen=True)
class _Info:
    """What discovery says of a resource: names as the real server's, verbs this fake serves."""

    kind: str
    singular: str
    short: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    namespaced: bool = True
    verbs: tuple[str, ...] = ("get", "list", "watch")


_INFO: dict[str, _Info] = {
    SERVICES: _Info("Service", "service", ("svc",), ("all",)),
    ENDPOINTSLICES: _Info("EndpointSlice", "endpointslice"),
    SERVICEEXPORTS: _Info("ServiceExport", "serviceexport", ("svcex",)),
    NAMESPACES: _Info("Namespace", "namespace", ("ns",), namespaced=False, verbs=("get",)),
}


def _gv(api_version: str) -> tuple[str, str]:
    g, _, v = api_version.rpartition("/")
    return g, v


_GROUPS = {SERVICES: "", ENDPOINTSLICES: "discovery.k8s.io", SERVICEEXPORTS: "multicluster.x-k8s.io"}


def _forbidden(resource: str, verb: str, ns: str | None) -> web.Response:
    """The authorizer's 403, worded as kube-apiserver words it."""
    user = "system:serviceaccount:fedns:fedns"
    where = "at the cluster scope" if ns is None else f'in the namespace "{ns}"'
    group = _GROUPS.get(resource, "")
    return _json(
        403,
        status_object(
            403,
            "Forbidden",
            f'{resource} is forbidden: User "{user}" cannot {verb} resource "{resource}" '
            f'in API group "{group}" {where}',
            kind=resource,
            group=group,
        ),
    )


def _json(status: int, obj: Any) -> web.Response:
    return web.Response(
        status=status, body=json.dumps(obj).encode(), content_type="application/json"
    )


# -- kubeconfig -----------------------------------------------------------------------------------


def write_kubeconfig(path: Path, servers: Mapping[str, str], current: str | None = None) -> Path:
    """A kubeconfig with one context per (name -> http URL); no credentials."""
    import yaml

    names = list(servers)
    doc = {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": n, "cluster": {"server": servers[n]}} for n in names],
        "users": [{"name": f"{n}-user", "user": {}} for n in names],
        "contexts": [{"name": n, "context": {"cluster": n, "user": f"{n}-user"}} for n in names],
        "current-context": current or names[0],
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


# -- the truth, for tests: what a registry fed from these servers must contain ------------------


def truth(
    kube: FakeKube, export_mode: str = "all"
) -> dict[tuple[str, str], frozenset[tuple[Any, ...]]]:
    """(namespace, service) -> the set of (addresses, ready, serving, terminating, hostname, zone, node)
    a pod-reach cluster publishes, computed straight from the server's objects (IP slices of
    single-stack endpoints, conditions defaulted as the API documents)."""
    out: dict[tuple[str, str], set[tuple[Any, ...]]] = {}
    exported = {k for k in kube.store[SERVICEEXPORTS]}
    for (ns, name), _svc in kube.store[SERVICES].items():
        if export_mode == "serviceexport" and (ns, name) not in exported:
            continue
        out[(ns, name)] = set()
    for (ns, _), sl in kube.store[ENDPOINTSLICES].items():
        svc = sl["metadata"].get("labels", {}).get("kubernetes.io/service-name")
        if (ns, svc) not in out or sl.get("addressType") not in ("IPv4", "IPv6"):
            continue
        for e in sl.get("endpoints") or []:
            c = e.get("conditions", {})
            ready = True if c.get("ready") is None else c["ready"]
            serving = ready if c.get("serving") is None else c["serving"]
            out[(ns, svc)].add(
                (
                    tuple(e["addresses"]),
                    ready,
                    serving,
                    bool(c.get("terminating")),
                    e.get("hostname"),
                    e.get("zone"),
                    e.get("nodeName"),
                )
            )
    return {k: frozenset(v) for k, v in out.items()}


def registry_view(registry: Any, cluster: str) -> dict[tuple[str, str], frozenset[tuple[Any, ...]]]:
    """The same shape as ``truth`` read from a registry's snapshots for one cluster."""
    out: dict[tuple[str, str], frozenset[tuple[Any, ...]]] = {}
    for key in sorted(registry.keys()):
        snap = registry.snapshot(key)
        cs = snap.cluster(cluster) if snap is not None else None
        if cs is None:
            continue
        out[(key.namespace, key.name)] = frozenset(
            (e.addresses, e.ready, e.serving, e.terminating, e.hostname, e.zone, e.node)
            for e in cs.endpoints
        )
    return out


async def converge(
    registry: Any, kubes: Mapping[str, FakeKube], timeout: float = 10.0, export_mode: str = "all"
) -> None:
    """Wait until the registry equals every fake server's truth; fail with the difference if not."""
    end = time.monotonic() + timeout
    while True:
        diffs = {}
        for cname, kube in kubes.items():
            want, got = truth(kube, export_mode), registry_view(registry, cname)
            if want != got:
                diffs[cname] = (want, got)
        if not diffs:
            return
        if time.monotonic() > end:
            lines = []
            for cname, (want, got) in diffs.items():
                for k in sorted(set(want) | set(got)):
                    if want.get(k) != got.get(k):
                        lines.append(
                            f"{cname} {k}: want {sorted(want.get(k, ()))} got {sorted(got.get(k, ()))}"
                        )
            raise AssertionError(
                "registry never converged to the API servers' truth:\n" + "\n".join(lines[:20])
            )
        await asyncio.sleep(0.02)


async def until(pred: Any, what: str, timeout: float = 10.0) -> None:
    """Wait (bounded) for a condition the system must reach; fail naming it."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"never happened: {what}")
        await asyncio.sleep(0.01)


# -- fake servers on their own thread (for synchronous tests: a fedns subprocess + dnspython) ------


class ThreadedFakeKubes:
    """Fake API servers on a private event loop in a background thread.

    For tests that block (a ``fedns serve`` subprocess queried with dnspython)::

        with ThreadedFakeKubes(["east", "west"]) as fakes:
            fakes.call(lambda: fakes["east"].put_service("shop", "cart"))
            fed = federation_config(fakes.kubes, tmp_path)   # -> the config's federation:
            ...
            fakes.call(lambda: fakes["east"].put_slice(...))  # flip an endpoint
            fakes.run(fakes["east"].down())                   # coroutines too

    ``call`` runs a function on the servers' loop and returns its result, so the
    fakes are never touched from two threads.
    """

    def __init__(self, names: Iterable[str], **kw: Any) -> None:
        self.names = list(names)
        self.kw = kw
        self.kubes: dict[str, FakeKube] = {}
        self.loop = asyncio.new_event_loop()
        self._thread: Any = None

    def __getitem__(self, name: str) -> FakeKube:
        return self.kubes[name]

    def __enter__(self) -> ThreadedFakeKubes:
        import threading

        self._thread = threading.Thread(target=self.loop.run_forever, name="fakekube", daemon=True)
        self._thread.start()
        for n in self.names:
            self.kubes[n] = self.run(FakeKube(n, **self.kw).start())
        return self

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def call(self, fn: Any, *args: Any, timeout: float = 30.0) -> Any:
        async def wrapper() -> Any:
            return fn(*args)

        return self.run(wrapper(), timeout)

    def __exit__(self, *exc: object) -> None:
        for k in self.kubes.values():
            self.run(k.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


# -- pytest fixture -------------------------------------------------------------------------------


@pytest.fixture
async def fake_kube() -> AsyncIterator[Any]:
    """Factory: ``kube = await fake_kube("east", bookmark_interval=0.1)`` -> a started FakeKube."""
    started: list[FakeKube] = []

    async def make(name: str = "fake", **kw: Any) -> FakeKube:
        k = await FakeKube(name, **kw).start()
        started.append(k)
        return k

    yield make
    for k in started:
        await k.close()


# -- running a registry against fake servers ---------------------------------------------------


def fast_timings(**kw: Any) -> Any:
    """Watch timings for tests: sub-second timeouts and backoffs (same code paths as production)."""
    from resolver.federation.sources.kubernetes import WatchTimings

    base: dict[str, Any] = dict(
        watch_timeout_min=1,
        watch_timeout_max=2,
        connect_timeout=1.0,
        read_timeout=0.6,
        stall_margin=0.5,
        list_timeout=3.0,
        backoff_initial=0.02,
        backoff_max=0.2,
        short_watch=0.05,
        heartbeat=0.1,
        missing_retry=0.3,
    )
    base.update(kw)
    return WatchTimings(**base)


def federation_config(
    kubes: Mapping[str, FakeKube], directory: Path, **cluster_settings: Any
) -> dict[str, Any]:
    """A ``federation:`` mapping whose clusters are these fake servers (one kubeconfig, a context each).

    ``cluster_settings`` are added to every cluster entry (e.g. ``stale_after=0.5``); the
    kubeconfig path is relative, so put the config file in ``directory``.
    """
    kc = write_kubeconfig(directory / "clusters.kubeconfig", {n: k.url for n, k in kubes.items()})
    return {
        "zone": "global.example.test.",
        "clusters": [
            {
                "name": n,
                "kubeconfig": kc.name,
                "context": n,
                "region": f"r-{n}",
                "zone": f"z-{n}",
                **cluster_settings,
            }
            for n in kubes
        ],
    }


@dataclass
class Running:
    """A registry and the sources feeding it (for their reflectors' counters)."""

    registry: Any
    sources: dict[str, Any]

    def reflector(self, cluster: str, resource: str) -> Any:
        """The one reflector of ``resource`` (keyed ``resource/namespace`` when the
        source watches allowed namespaces one by one)."""
        found = [r for r in self.sources[cluster].reflectors.values() if r.kind == resource]
        assert len(found) == 1, f"{len(found)} reflectors of {resource} in {cluster}"
        return found[0]


@contextlib.asynccontextmanager
async def running_registry(
    kubes: Mapping[str, FakeKube],
    directory: Path,
    *,
    export: Mapping[str, Any] | None = None,
    timings: Any = None,
    clusters: Mapping[str, Mapping[str, Any]] | None = None,
    coalesce: float = 0.002,
) -> AsyncIterator[Running]:
    """A Registry fed by KubernetesSources for these fake servers, synced; cancelled on exit.

    ``clusters`` adds per-cluster settings (``{"east": {"stale_after": 0.5}}``).
    """
    from resolver.federation.config import federation_from_dict
    from resolver.federation.registry import Registry
    from resolver.federation.sources import build_sources

    raw = federation_config(kubes, directory)
    for c in raw["clusters"]:
        c.update((clusters or {}).get(c["name"], {}))
    if export:
        raw["export"] = dict(export)
    fed = federation_from_dict(raw, directory / "fedns.yaml")
    reg = Registry.from_config(fed, coalesce=coalesce)
    sources = build_sources(fed, timings=timings or fast_timings())
    task = asyncio.create_task(reg.run(sources))
    try:
        if not await reg.wait_synced(10):
            raise AssertionError(f"registry did not sync: {reg.cluster_status()}")
        yield Running(reg, {s.cluster.name: s for s in sources})
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        reg.close()
