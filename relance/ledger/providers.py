"""Provider configurations: which provider reaches which of an app's platforms, with what
credentials (never returned by the API, never passed to a workflow)."""

from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from relance.db import ProviderConfig, reading, utcnow


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
