"""What counts as a secret, and how it is kept out of everything we write.

One place for the rules, used by every writer that could leak one:

- a config key is secret when its last name ends in ``password``, ``secret``, ``token`` or
  ``api_key`` (``deploy.api_key``, ``replay.options.sasl.password``, ``hf_token``); its value
  is written as ``***`` (:func:`redact`) and left out of the config hash (:func:`without_secrets`);
- a URL's password is secret wherever the URL appears (a config value, an error message, a
  log line): ``redis://user:pw@host`` is written ``redis://user:***@host`` (:func:`redact_url`);
- :func:`secret_values` lists the secret strings of a config, so a file we did not write
  ourselves (Hydra's ``.hydra/*.yaml``, which repeat the command line) can be scrubbed of them.

Kept on the ground floor: imports only the standard library and omegaconf.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from omegaconf import OmegaConf

MASK = "***"

#: A key whose last dotted/underscored name ends in one of these holds a secret.
SECRET_SUFFIXES = ("password", "secret", "token", "api_key")

#: scheme://user:password@  (user may be empty: redis://:pw@host). The password stops at
#: the first @, / ? # or whitespace, as a URL parser would read the authority.
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^:@/?#\s]*):(?P<password>[^@/?#\s]+)@")


def is_secret_key(key: Any) -> bool:
    """``deploy.api_key`` -> True; ``kafka.sasl.password`` -> True; ``prefix`` -> False."""
    name = str(key).strip().lower().replace("-", "_")
    name = name.rsplit(".", 1)[-1]
    return name.endswith(SECRET_SUFFIXES)


def redact_url(text: Any) -> Any:
    """Every ``scheme://user:password@`` in ``text`` with the password masked; non-strings as is."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL_USERINFO.sub(lambda m: f"{m.group('head')}:{MASK}@", text)


def url_passwords(text: Any) -> list[str]:
    """The passwords of the URLs in ``text`` (to scrub copies we did not write)."""
    if not isinstance(text, str) or "://" not in text:
        return []
    return [m.group("password") for m in _URL_USERINFO.finditer(text)]


def redact(obj: Any) -> Any:
    """A copy of a plain container (dicts, lists, scalars) with secrets masked.

    Values of secret keys become ``***`` (``None`` stays ``None``: "not set" is no secret);
    URL passwords in any string are masked.
    """
    if isinstance(obj, dict):
        return {k: (MASK if v is not None else None) if is_secret_key(k) else redact(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return redact_url(obj)


def without_secrets(obj: Any) -> Any:
    """A copy with secret keys dropped and URL passwords masked: what a hash may see.

    Changing only a key or a password then leaves the hash as it was.
    """
    if isinstance(obj, dict):
        return {k: without_secrets(v) for k, v in obj.items() if not is_secret_key(k)}
    if isinstance(obj, (list, tuple)):
        return [without_secrets(v) for v in obj]
    return redact_url(obj)


def secret_values(obj: Any) -> set[str]:
    """Every secret string in a plain container: values of secret keys and URL passwords."""
    found: set[str] = set()

    def walk(node: Any, secret: bool) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, secret or is_secret_key(k))
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v, secret)
        elif node is not None:
            text = str(node)
            if secret and text:
                found.add(text)
            found.update(url_passwords(text))

    walk(obj, False)
    return {s for s in found if s and s != MASK}


def scrub(text: str, values: Iterable[str]) -> str:
    """``text`` with every occurrence of each secret value masked (longest first), URLs redacted."""
    for value in sorted(set(values), key=len, reverse=True):
        if value:
            text = text.replace(value, MASK)
    return redact_url(text)


def config_container(cfg: Any) -> Any:
    """A resolved plain copy of an OmegaConf config (or a plain container as is)."""
    if OmegaConf.is_config(cfg):
        try:
            return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
        except Exception:  # an interpolation that cannot be resolved here: the raw values
            return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)
    return cfg


def redacted_yaml(cfg: Any) -> str:
    """The resolved config as YAML, secrets masked: what we log as the run's config."""
    return OmegaConf.to_yaml(OmegaConf.create(redact(config_container(cfg))))
