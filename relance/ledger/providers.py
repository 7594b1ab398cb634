"""Provider configurations: which provider reaches which of an app's platforms, with what
credentials (never returned by the API, never passed to a workflow)."""

from datetime import datetime
from typing import Any

from pydantic import BaseModel
from sqlalchemy import and_, func
from sqlalchemy import select as sa_select
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import App, Delivery, Device, ProviderConfig, Push, Recipient, reading, utcnow


def set_provider(
    engine: Engine, app_key: str, provider: str, platforms: list[str], credentials: dict[str, Any]
) -> ProviderConfig:
    """Store (or replace) how the app reaches `platforms`; a platform moves from any other
    provider of the app to this one."""
    with Session(engine) as session:
        configs = {
            c.provider: c
            for c in session.exec(select(ProviderConfig).where(ProviderConfig.app_key == app_key))
        }
        for other in configs.values():
            if other.provider != provider:
                other.platforms = [p for p in other.platforms if p not in platforms]
                other.updated_at = utcnow()
        config = configs.get(provider) or ProviderConfig(app_key=app_key, provider=provider)
        config.platforms, config.credentials, config.updated_at = platforms, credentials, utcnow()
        session.add(config)
        session.commit()
        session.refresh(config)
        return config


def provider_configs(engine: Engine, app_key: str) -> list[ProviderConfig]:
    with Session(reading(engine)) as session:
        return list(
            session.exec(
                select(ProviderConfig)
                .where(ProviderConfig.app_key == app_key)
                .order_by(col(ProviderConfig.provider))
            )
        )


class ProviderVersion(BaseModel):
    """Which provider reaches which platforms, and since when: no credentials."""

    provider: str
    platforms: list[str]
    updated_at: datetime


def provider_versions(engine: Engine, app_key: str) -> tuple[str, list[ProviderVersion]]:
    """The app's default provider and its configurations without their credentials, in one
    read: what a sender needs to know before each stage, to rebuild only a client whose
    configuration changed (`provider_config` then opens its credentials)."""
    query = (
        sa_select(
            col(App.provider),
            col(ProviderConfig.provider),
            col(ProviderConfig.platforms),
            col(ProviderConfig.updated_at),
        )
        .select_from(App)
        .outerjoin(ProviderConfig, col(ProviderConfig.app_key) == App.app_key)
        .where(col(App.app_key) == app_key)
        .order_by(col(ProviderConfig.provider))
    )
    with reading(engine).connect() as conn:
        rows = conn.execute(query).all()
    default = rows[0][0] if rows else "simulator"
    return default, [
        ProviderVersion(provider=r[1], platforms=list(r[2] or []), updated_at=r[3])
        for r in rows
        if r[1] is not None
    ]


def provider_config(engine: Engine, app_key: str, provider: str) -> ProviderConfig | None:
    with Session(reading(engine)) as session:
        return session.exec(
            select(ProviderConfig).where(
                ProviderConfig.app_key == app_key, ProviderConfig.provider == provider
            )
        ).first()


def delete_provider(engine: Engine, app_key: str, provider: str) -> bool:
    with Session(engine) as session:
        config = session.exec(
            select(ProviderConfig).where(
                ProviderConfig.app_key == app_key, ProviderConfig.provider == provider
            )
        ).first()
        if config is None:
            return False
        session.delete(config)
        session.commit()
        return True


class SendError(BaseModel):
    msg_id: str
    stage: int
    registration_id: str
    platform: str
    error: str | None
    failed_at: datetime


class InvalidatedTokens(BaseModel):
    platform: str
    count: int
    last_reason: str | None


def recent_send_errors(
    engine: Engine, app_key: str, pushed_since: datetime, limit: int = 20
) -> list[SendError]:
    """The app's latest failed sends, newest first, among its pushes made since
    `pushed_since` (which bounds the read), each with its recipient's platform."""
    d, r, p = Delivery, Recipient, Push
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(
                col(d.msg_id),
                col(d.stage),
                col(d.registration_id),
                col(r.platform),
                col(d.error),
                col(d.failed_at),
            )
            .join(p, col(p.msg_id) == col(d.msg_id))
            .join(
                r,
                and_(
                    col(r.msg_id) == col(d.msg_id),
                    col(r.registration_id) == col(d.registration_id),
                ),
            )
            .where(
                col(p.app_key) == app_key,
                col(p.created_at) >= pushed_since,
                col(d.failed_at).is_not(None),
            )
            .order_by(col(d.failed_at).desc())
            .limit(limit)
        ).all()
    return [
        SendError(msg_id=m, stage=s, registration_id=rid, platform=pf, error=e, failed_at=at)
        for m, s, rid, pf, e, at in rows
    ]


def invalidated_tokens(engine: Engine, app_key: str, since: datetime) -> list[InvalidatedTokens]:
    """Per platform, the app's device tokens a provider declared dead since `since` (a
    device that registered again since then is valid again and not counted)."""
    dv = Device
    with Session(reading(engine)) as session:
        rows = session.execute(
            sa_select(col(dv.platform), func.count(), func.max(col(dv.invalid_reason)))
            .where(
                col(dv.app_key) == app_key,
                col(dv.valid).is_(False),
                col(dv.updated_at) >= since,
            )
            .group_by(col(dv.platform))
            .order_by(col(dv.platform))
        ).all()
    return [InvalidatedTokens(platform=pf, count=n, last_reason=reason) for pf, n, reason in rows]
