"""What a running server holds: its settings, cases, sessions and inference workers."""

from __future__ import annotations

from dataclasses import dataclass

from medsam2.engine.models import memory_banks
from medsam2.server.cases import CaseCatalog
from medsam2.server.inference import InferencePool
from medsam2.server.sessions import SessionStore
from medsam2.server.settings import ServerSettings


@dataclass
class ServerState:
    settings: ServerSettings
    catalog: CaseCatalog
    sessions: SessionStore
    inference: InferencePool
    memory_banks: tuple[str, ...]  # what sessions may choose: none for LiteMedSAM, which has no memory

    @classmethod
    def from_settings(cls, settings: ServerSettings) -> ServerState:
        return cls(
            settings=settings,
            catalog=CaseCatalog(settings.data_dir, settings.upload_dir, offer_samples=settings.data_dir is None or settings.with_samples),
            sessions=SessionStore(settings.max_sessions, settings.session_idle_seconds),
            inference=InferencePool(settings.model, settings.devices, settings.compiled),
            memory_banks=memory_banks(settings.model),
        )

    def close(self) -> None:
        self.inference.close()
        self.catalog.close()
