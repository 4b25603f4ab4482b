"""What `register`, `rotate` and `status` do (their options and help are in lifecycle.py).

A secret goes from Gemini's answer straight into a new version of the relay's secret: it is
never printed, logged, written to a local file or taken from the command line. A secret is
named by its fingerprint (the first 8 hex digits of its key's SHA-256) or Gemini's expiry.
A new version is written only after Gemini answered, and Secret Manager is checked (read
access, write permission) before Gemini is asked for a secret it shows only once.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NoReturn, TypeVar, cast
from urllib.parse import quote, urlsplit

import click
import google.genai
from google.genai import webhooks as gw

from .. import gemini
from ..config import is_loopback
from ..errors import ConfigError
from ..signing_secrets import Secret, parse_entries, rfc3339
from ._common import DEFAULT_SECRET, Progress, fail, note
from .relay_records import PingWatch, RecordsError, RelayRecords
from .secret_store import Latest, SecretStore, SecretStoreError, Written, resource_name

T = TypeVar("T")
DEFAULT_DEDUP_COLLECTION = "webhook_deliveries"
DEFAULT_JOBS_COLLECTION = "gemini_jobs"
# A ping the relay refused (its secrets file not yet re-read) is not retried by anyone else.
PING_EVERY_SECONDS = 3.0
# The relay stamps first_seen_at with its own clock.
CLOCK_SKEW = timedelta(seconds=2)


class StepFailed(Exception):
    """A Gemini call failed; the message is one line without a secret."""


class SecretLost(StepFailed):
    """Gemini issued a secret, but its answer held none that can be used."""


@dataclass(frozen=True)
class Target:
    project: str
    url: str
    secret: str  # the secret's resource name
    secret_option: str  # as given, to repeat it in advice

    def command(self, name: str) -> str:
        extra = "" if self.secret_option == DEFAULT_SECRET else f" --secret {self.secret_option}"
        return f"webhook-relay {name} --project {self.project} --url {self.url}{extra}"


def run_register(project: str, url: str, secret_name: str, events: str | None, wait: int) -> None:
    target = _target(project, url, secret_name)
    wanted = _events(events, gemini.subscribable_events())
    client = _client()
    store = _store(target)
    _step(store.read_latest)  # readable and well-formed, before Gemini is asked for anything
    hooks = _step(lambda: _gemini("listing webhooks", lambda: gemini.webhooks_for(client, url)))
    if hooks:
        hooks = [_converge(client, hook, wanted) for hook in hooks]
    else:
        hooks = [_create(client, store, target, wanted or gemini.subscribable_events())]
    _confirm_ping(client, hooks, target, wait)


def run_rotate(project: str, url: str, secret_name: str) -> None:
    target = _target(project, url, secret_name)
    client = _client()
    store = _store(target)
    latest = _step(store.read_latest)
    if latest is None:
        fail(f"{target.secret} has no version yet: run `{target.command('register')}` first")
    _step(store.check_can_write)
    hooks = _step(lambda: _gemini("listing webhooks", lambda: gemini.webhooks_for(client, url)))
    if not hooks:
        fail(f"no webhook is registered for {url}: run `{target.command('register')}`")
    rotated: list[tuple[gw.Webhook, Secret, gw.Webhook | None]] = []
    problem = lost = None
    for hook in hooks:
        try:
            new = _rotate_one(client, str(hook.id))
        except StepFailed as error:
            problem = str(error)
            if isinstance(error, SecretLost):
                lost = f"Run `{target.command('rotate')}` again to have another one issued"
            break
        rotated.append((hook, new, _read_after_rotation(client, str(hook.id))))
    if not rotated:
        fail(f"{problem}. Nothing was changed." if not lost else f"{problem}. {lost}.")
    rotated_ids = ", ".join(str(hook.id) for hook, _, _ in rotated)
    until = _latest_expiry(rotated)
    plan = Rotation()

    def build(base: Latest | None) -> tuple[Secret, ...]:
        nonlocal plan
        plan = rotation_entries(base.entries if base else (), rotated, datetime.now(UTC), hooks)
        return plan.entries

    try:
        written = store.write(build, datetime.now(UTC), on_retry=_retrying_note)
    except Exception as error:
        valid = f"until {rfc3339(until)}" if until else "for now"
        fail(
            f"Gemini rotated the signing secret of webhook {rotated_ids}, but writing it to "
            f"{target.secret} failed: {_why(error)}. Gemini shows a new secret only once: run "
            f"`{target.command('rotate')}` again once Secret Manager works. Deliveries still "
            f"verify with the previous secret {valid}."
        )
    click.echo(f"Rotated the signing secret of webhook {rotated_ids}.")
    if plan.foreign:
        names = sorted({str(e.webhook) for e in plan.foreign})
        click.echo(
            f"Left {_count(len(plan.foreign), 'secret')} of other webhooks as "
            f"{'it is' if len(plan.foreign) == 1 else 'they are'} (webhook {', '.join(names)})."
        )
    if plan.untagged:
        prints = ", ".join(e.fingerprint for e in plan.untagged)
        click.echo(
            f"Left {_count(len(plan.untagged), 'untagged secret')} as "
            f"{'it is' if len(plan.untagged) == 1 else 'they are'} ({prints}): not provably "
            f"webhook {rotated_ids}'s; see `{target.command('status')}`."
        )
    if until is None:
        note("Gemini reported no expiry for the previous secret: it stays in the relay's secret")
    _stored_line(target, written, len(rotated), plan, until)
    if problem:
        fail(f"{problem}; run `{target.command('rotate')}` again for the webhooks not rotated")


def _stored_line(
    target: Target, written: Written, new: int, plan: Rotation, until: datetime | None
) -> None:
    expiring = len(plan.expiring)
    click.echo(
        f"Stored {target.secret} version {written.version}: the new {_plural(new, 'secret')}, "
        f"{expiring} previous"
        + (f" accepted until {rfc3339(until)}" if until and expiring else "")
        + f", {len(written.entries) - new - expiring} other"
        + (f" (dropped {plan.dropped} already expired)" if plan.dropped else "")
        + (f" (merged {_count(written.merged, 'concurrent version')})" if written.merged else "")
        + "."
    )


def run_status(project: str, url: str, secret_name: str) -> None:
    target = _target(project, url, secret_name)
    client = _client()
    hooks = _step(lambda: _gemini("listing webhooks", lambda: gemini.webhooks_for(client, url)))
    now = datetime.now(UTC)
    version = gemini.api_version(os.environ)
    if not hooks:
        click.echo(f"No webhook is registered for {url} (Gemini API {version}).")
    for hook in hooks:
        click.echo(f"Webhook {hook.id} for {url} (Gemini API {version}): {hook.state}")
        click.echo(f"  events: {', '.join(str(e) for e in hook.subscribed_events) or 'none'}")
        expiries = [s.expire_time for s in hook.signing_secrets or ()]
        click.echo(f"  signing secrets at Gemini: {len(expiries)}")
        for expiry in expiries:
            click.echo(f"    {_expiry(expiry, now)}")
    latest = _step(_store(target).read_latest)
    if latest is None:
        click.echo(f"Relay secret {target.secret}: no version (the relay gets no secret from it)")
    else:
        count = len(latest.entries)
        click.echo(
            f"Relay secret {target.secret}, version {latest.version}: "
            f"{count} {_plural(count, 'secret')}"
        )
        for entry in latest.entries:
            owner = f"webhook {entry.webhook}" if entry.webhook else "untagged"
            click.echo(f"  {entry.fingerprint}  {owner}  {_expiry(entry.expires_at, now)}")
    collection = os.environ.get("RELAY_JOBS_COLLECTION") or DEFAULT_JOBS_COLLECTION
    try:
        counts = RelayRecords(project).watch_counts(collection)
    except RecordsError as error:
        fail(f"reading the watch list ({collection}): {error}")
    total = sum(counts.values())
    by_state = ", ".join(f"{n} {state}" for state, n in counts.items())
    click.echo(f"Watch list ({collection}): {total} {_plural(total, 'job')}: {by_state}")


# --- steps -------------------------------------------------------------------------------------


def _target(project: str, url: str, secret_name: str) -> Target:
    url = url.strip()
    try:
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
    except ValueError:
        scheme, host = "", ""
    if not host or not (scheme == "https" or (scheme == "http" and is_loopback(host))):
        fail(f"--url {url}: must be an https URL (http only for loopback hosts)")
    try:
        return Target(project, url, resource_name(project, secret_name), secret_name)
    except SecretStoreError as error:
        fail(str(error))


def _client(retry: bool = True) -> google.genai.Client:
    try:
        return gemini.client_from_env(os.environ, retry=retry)
    except ConfigError as error:
        fail(str(error))


def _store(target: Target) -> SecretStore:
    return SecretStore(target.secret)


def _step(call: Callable[[], T]) -> T:
    """Run one call; a failure of Gemini or Secret Manager ends the command with one line."""
    try:
        return call()
    except (StepFailed, SecretStoreError) as error:
        fail(str(error))


def _gemini(what: str, call: Callable[[], T]) -> T:
    try:
        return call()
    except Exception as error:
        raise StepFailed(f"Gemini API: {what} {gemini.describe_error(error)}") from None


def _gemini_secret(value: str | None, what: str) -> Secret:
    if not value:
        raise StepFailed(f"its answer held no {what}")
    try:
        (secret,) = parse_entries(value, what)
    except (ConfigError, ValueError):
        raise StepFailed(
            f"its {what} is not one whsec_<base64> secret of 16 bytes or more"
        ) from None
    return secret


def _events(raw: str | None, known: Sequence[str]) -> list[str] | None:
    if raw is None:
        return None
    events = [e.strip() for e in raw.split(",") if e.strip()]
    unknown = [e for e in events if e not in known]
    if not events or unknown:
        fail(f"--events: {', '.join(unknown) or 'empty'}; known types: {', '.join(known)}")
    return events


def _rotate_one(client: google.genai.Client, hook_id: str) -> Secret:
    answer = _gemini(
        f"rotating the signing secret of webhook {hook_id}",
        lambda: client.webhooks.rotate_signing_secret(
            hook_id, revocation_behavior="revoke_previous_secrets_after_h24"
        ),
    )
    try:
        return _gemini_secret(answer.secret, f"webhook {hook_id}'s new signing secret")
    except StepFailed as error:
        raise SecretLost(f"Gemini rotated, but {error}") from None


def _read_after_rotation(client: google.genai.Client, hook_id: str) -> gw.Webhook | None:
    """The webhook with the expiries Gemini set; None (and a note) if it cannot be read."""
    try:
        return _gemini(f"reading webhook {hook_id}", lambda: client.webhooks.get(hook_id))
    except StepFailed as error:
        note(f"{error}: the previous secrets keep the expiry they had")
        return None


def _ping(client: google.genai.Client, hook_id: str) -> None:
    _step(lambda: _gemini(f"pinging webhook {hook_id}", lambda: client.webhooks.ping(hook_id)))


def _converge(
    client: google.genai.Client, hook: gw.Webhook, wanted: list[str] | None
) -> gw.Webhook:
    hook_id = str(hook.id)
    click.echo(f"Webhook {hook_id} is already registered for {hook.uri}: not creating another.")
    if hook.state != "enabled":
        hook = _step(
            lambda: _gemini(
                f"enabling webhook {hook_id}",
                lambda: client.webhooks.update(hook_id, state="enabled", update_mask="state"),
            )
        )
        click.echo(f"Enabled webhook {hook_id} again (it was disabled).")
    if wanted is not None and set(wanted) != set(hook.subscribed_events):
        hook = _step(
            lambda: _gemini(
                f"updating the events of webhook {hook_id}",
                lambda: client.webhooks.update(
                    hook_id, subscribed_events=_typed(wanted), update_mask="subscribed_events"
                ),
            )
        )
        click.echo(f"Subscribed webhook {hook_id} to {', '.join(wanted)}.")
    return hook


def _create(
    client: google.genai.Client,
    store: SecretStore,
    target: Target,
    events: Sequence[str],
) -> gw.Webhook:
    if _step(store.ensure):
        click.echo(f"Created the secret {target.secret}.")
    _step(store.check_can_write)
    # One attempt: a create whose answer was lost, retried, would make a second webhook.
    once = _client(retry=False)
    try:
        hook = _gemini(
            "creating the webhook",
            lambda: once.webhooks.create(uri=target.url, subscribed_events=_typed(events)),
        )
    except StepFailed as error:
        _after_failed_create(client, target, error)
    rescue = (
        f"Gemini shows a webhook's secret only once: run `{target.command('rotate')}` once "
        "Secret Manager works, to have a new one issued and stored"
    )
    try:
        new = _gemini_secret(hook.new_signing_secret, "new_signing_secret")
    except StepFailed as error:
        fail(f"Gemini created webhook {hook.id}, but {error}. {rescue}.")
    new = new.tagged(webhook_tag(str(hook.id)))

    def build(base: Latest | None) -> tuple[Secret, ...]:
        now = datetime.now(UTC).timestamp()
        return (new, *(e for e in (base.entries if base else ()) if e.live(now)))

    try:
        written = store.write(build, datetime.now(UTC), on_retry=_retrying_note)
    except Exception as error:
        fail(
            f"Gemini created webhook {hook.id} for {target.url}, but writing its signing secret "
            f"to {target.secret} failed: {_why(error)}. {rescue}."
        )
    count = len(written.entries)
    click.echo(f"Created webhook {hook.id} for {target.url} ({', '.join(events)}).")
    click.echo(
        f"Stored its signing secret in {target.secret} version {written.version} "
        f"({count} {_plural(count, 'secret')}"
        + (f", merged {_count(written.merged, 'concurrent version')}" if written.merged else "")
        + ")."
    )
    return hook


def _after_failed_create(
    client: google.genai.Client, target: Target, error: StepFailed
) -> NoReturn:
    """Whether Gemini created the webhook although its answer did not arrive, and what to do."""
    try:
        found = gemini.webhooks_for(client, target.url)
    except Exception:
        fail(
            f"{error}. Whether Gemini created it anyway is unknown: run "
            f"`{target.command('status')}`, then register again (it never duplicates)"
        )
    if found:
        fail(
            f"{error}, yet webhook {found[0].id} now exists for {target.url}; its secret was "
            f"never shown: run `{target.command('rotate')}` to have one issued and stored"
        )
    fail(f"{error}. Nothing was created")


def _confirm_ping(
    client: google.genai.Client, hooks: Sequence[gw.Webhook], target: Target, wait: int
) -> None:
    """Ping, and find the relay's record of it: the relay records only verified deliveries."""
    collection = os.environ.get("RELAY_DEDUP_COLLECTION") or DEFAULT_DEDUP_COLLECTION
    watch = PingWatch(RelayRecords(target.project), collection, datetime.now(UTC) - CLOCK_SKEW)
    start = time.monotonic()
    deadline = start + wait
    next_ping = 0.0
    ids = ", ".join(str(hook.id) for hook in hooks)

    def progress() -> str:
        waited = int(time.monotonic() - start)
        return (
            f"waiting for the relay to record the ping of webhook {ids}: {waited} s of {wait} s, "
            f"{_count(watch.read, 'delivery record')} read"
        )

    with Progress(progress):
        while True:
            now = time.monotonic()
            # The first ping always; again while there is time for the relay to record it.
            if next_ping == 0.0 or next_ping <= now < deadline:
                for hook in hooks:
                    _ping(client, str(hook.id))
                next_ping = time.monotonic() + PING_EVERY_SECONDS
            try:
                record = watch.poll()
            except RecordsError as error:
                fail(f"pinged webhook {ids}, but reading the relay's records failed: {error}")
            if record is not None:
                break
            if time.monotonic() >= deadline:
                fail(
                    f"pinged webhook {ids}, but the relay recorded no verified ping within "
                    f"{wait} s. Check that {target.url} serves the relay, that the relay reads "
                    f"{target.secret} (WEBHOOK_SIGNING_SECRETS_FILE), and its log for 401 "
                    f"answers; `{target.command('status')}` lists the secrets"
                )
            time.sleep(0.5)
    click.echo(f"Pinged webhook {ids}: the relay verified the ping.")


def webhook_tag(hook_id: str) -> str:
    """How a secret names its webhook: the id, with what the secrets format reserves escaped."""
    return quote(hook_id, safe="/:@._-~")


@dataclass(frozen=True)
class Rotation:
    entries: tuple[Secret, ...] = ()
    expiring: tuple[Secret, ...] = ()  # the rotated webhooks' previous secrets
    foreign: tuple[Secret, ...] = ()  # other webhooks' secrets, left as they are
    untagged: tuple[Secret, ...] = ()  # no webhook named, not provably ours: left as they are
    dropped: int = 0  # already expired


@dataclass
class _Reported:
    """What Gemini reports for one rotated webhook: its secrets' truncated forms and expiries."""

    expiries: list[tuple[str, datetime]] = field(default_factory=list)

    @property
    def latest(self) -> datetime | None:
        return max((expiry for _, expiry in self.expiries), default=None)


def rotation_entries(
    previous: Sequence[Secret],
    rotated: Sequence[tuple[gw.Webhook, Secret, gw.Webhook | None]],
    now: datetime,
    registered: Sequence[gw.Webhook] = (),
) -> Rotation:
    """The new secrets first (each tagged with its webhook), then the previous ones.

    A rotated webhook's own previous secrets get the expiry Gemini reports: the one matched by
    its truncated form where that is unambiguous, else the latest it reports (the one it just
    set for the secret it rotated out). Other webhooks' secrets are left as they are. An
    untagged secret (stored before secrets named their webhook) gets an expiry only when it is
    provably the rotated webhook's: exactly one webhook uses this relay (one registered for the
    URL, no other webhook's secret stored) and it matches Gemini's expiring secret. Secrets
    already expired are dropped.
    """
    reported: dict[str, _Reported] = {}
    for hook, _, after in rotated:
        seen = reported.setdefault(webhook_tag(str(hook.id)), _Reported())
        for s in after.signing_secrets or () if after is not None else ():
            if s.expire_time is not None:
                seen.expiries.append((s.truncated_secret or "", s.expire_time))
    live = [e for e in previous if e.live(now.timestamp())]
    others = {e.webhook for e in live if e.webhook and e.webhook not in reported}
    # The upgrade path for untagged secrets: only when exactly one webhook uses this relay.
    sole = next(iter(reported.items())) if len(registered or rotated) == 1 and not others else None
    kept: list[Secret] = []
    expiring, foreign, untagged = [], [], []
    for entry in live:
        if entry.webhook and entry.webhook not in reported:
            foreign.append(entry)
            kept.append(entry)
            continue
        if entry.webhook:
            mine = reported[entry.webhook]
            expiry = _match(entry, mine.expiries, live) or mine.latest
            ours = entry
        else:
            expiry = _match(entry, sole[1].expiries, live) if sole else None
            if sole is None or expiry is None:
                untagged.append(entry)
                kept.append(entry)
                continue
            ours = entry.tagged(sole[0])  # provably this webhook's now: say so
        if expiry is not None and (ours.expires_at is None or expiry < ours.expires_at):
            ours = ours.expiring(expiry)
        expiring.append(ours)
        kept.append(ours)
    new = [secret.tagged(webhook_tag(str(hook.id))) for hook, secret, _ in rotated]
    return Rotation(
        (*new, *kept),
        tuple(expiring),
        tuple(foreign),
        tuple(untagged),
        len(previous) - len(live),
    )


def _match(
    entry: Secret, reported: Sequence[tuple[str, datetime]], entries: Sequence[Secret]
) -> datetime | None:
    for truncated, expiry in reported:
        prefix = truncated.rstrip(".…*")
        if len(prefix.removeprefix("whsec_")) < 4:
            continue
        holders = [e for e in entries if e.text.startswith(prefix)]
        if holders == [entry]:
            return expiry
    return None


def _latest_expiry(
    rotated: Sequence[tuple[gw.Webhook, Secret, gw.Webhook | None]],
) -> datetime | None:
    expiries = [
        s.expire_time
        for _, _, after in rotated
        if after is not None
        for s in after.signing_secrets or ()
        if s.expire_time is not None
    ]
    return max(expiries, default=None)


def _expiry(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "no expiry"
    left = moment - now
    if left <= timedelta(0):
        return f"expired {rfc3339(moment)} (no longer accepted)"
    hours, minutes = divmod(int(left.total_seconds()) // 60, 60)
    return f"expires {rfc3339(moment)} (in {hours} h {minutes:02d} min)"


def _why(error: Exception) -> str:
    # Only our own errors' text is known to hold no secret (the payload was in the call).
    text = str(error) if isinstance(error, SecretStoreError) else type(error).__name__
    return text.rstrip(".")


def _typed(events: Sequence[str]) -> list[gw.WebhookSubscribedEvent]:
    # Checked against the SDK's own list (subscribable_events) before this.
    return cast("list[gw.WebhookSubscribedEvent]", list(events))


def _plural(count: int, word: str) -> str:
    return word if count == 1 else word + "s"


def _count(count: int, word: str) -> str:
    return f"{count} {_plural(count, word)}"


def _retrying_note(message: str) -> None:
    note(message)
