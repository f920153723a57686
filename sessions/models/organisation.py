"""The plant and who works on it: vendor organisations, users, sites, windows, zones, agents,
assets with their declared endpoints, vendor contracts and plant-wide flags."""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.orm import validates
from sqlmodel import Field

from sessions.models.base import (
    CASCADE,
    RESTRICT,
    SET_NULL,
    TableModel,
    added_list,
    check_timezone,
    created_field,
    id_field,
    maybe_when,
    one_of,
    optional_fk,
)
from sessions.models.enums import AgentState, Criticality
from sessions.types import UTCDateTime, json_field


class VendorOrg(TableModel, table=True):
    """A vendor company; ``slug`` equals the IdP's ``vendor_org`` claim."""

    __tablename__ = "vendor_orgs"

    id: str = id_field()
    slug: str = Field(unique=True)
    name: str
    # Further values of the IdP's org claim that map to this organisation (besides ``slug``).
    idp_values: list[str] = added_list()
    contacts: list[str] = added_list()
    created_at: datetime = created_field()


class User(TableModel, table=True):
    """A person known from the IdP, keyed by (issuer, sub); claims are refreshed at login."""

    __tablename__ = "users"
    __table_args__ = (sa.UniqueConstraint("issuer", "sub"),)

    id: str = id_field()
    issuer: str
    sub: str
    email: str = ""  # "" when the IdP does not release it
    name: str = ""
    groups: list[str] = json_field(list)
    roles: list[str] = json_field(list)
    vendor_org_id: str | None = optional_fk("vendor_orgs.id")
    amr: list[str] = json_field(list)
    disabled: bool = False
    created_at: datetime = created_field()
    last_login_at: datetime | None = maybe_when()


class Site(TableModel, table=True):
    """A plant.  ``timezone`` is an IANA name, checked on assignment."""

    __tablename__ = "sites"

    id: str = id_field()
    name: str = Field(unique=True)
    timezone: str
    description: str = ""

    @validates("timezone")
    def _validate_timezone(self, key: str, value: str) -> str:
        return check_timezone(value)


class MaintenanceWindow(TableModel, table=True):
    """A recurring maintenance window of a site, in the site's timezone.

    ``days`` are the days the window *starts* on (``mon``..``sun``); ``start``/``end`` are
    ``HH:MM``; an ``end`` at or before ``start`` means the window runs past midnight.
    """

    __tablename__ = "maintenance_windows"

    id: str = id_field()
    site_id: str = Field(foreign_key="sites.id", ondelete=CASCADE, index=True)
    days: list[str] = json_field(list)
    start: str
    end: str
    description: str = ""
    created_at: datetime = created_field()


class PlantFlag(TableModel, table=True):
    """A plant-wide switch, e.g. ``vendor_lockout``; ``value`` is a small JSON object."""

    __tablename__ = "plant_flags"

    key: str = Field(primary_key=True)
    value: dict[str, Any] = json_field(dict)
    updated_at: datetime = created_field()
    updated_by: str | None = None


class Zone(TableModel, table=True):
    """An IEC 62443 zone inside a site, at a Purdue level 0..5."""

    __tablename__ = "zones"
    __table_args__ = (
        sa.UniqueConstraint("site_id", "name"),
        sa.CheckConstraint("purdue_level >= 0 AND purdue_level <= 5", name="purdue_level"),
    )

    id: str = id_field()
    # No separate index: site_id leads uq_zones_site_id_name.
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=False)
    name: str
    purdue_level: int
    description: str = ""
    notes: str = Field(default="", sa_column_kwargs={"server_default": ""})


class Agent(TableModel, table=True):
    """An agent process in an OT zone that dials out to the broker."""

    __tablename__ = "agents"
    __table_args__ = (one_of("state", AgentState.ALL),)

    id: str = id_field()
    name: str
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=True)
    zone_id: str | None = optional_fk("zones.id")
    state: str = AgentState.PENDING
    public_key: str | None = None
    # SHA-256 pin of ``public_key`` (agents.wire.key_pin): how the gateway finds the agent.
    key_pin: str | None = Field(default=None, unique=True)
    cert_serial: str | None = None
    version: str | None = None
    hostname: str | None = None
    # The broker node holding its tunnel now (None when disconnected everywhere known).
    connected_via: str | None = None
    last_seen_at: datetime | None = maybe_when()
    revoked_at: datetime | None = maybe_when()
    created_at: datetime = created_field()


class AgentJoinToken(TableModel, table=True):
    """A one-time, expiring enrolment token for a site/zone; only the secret's hash is stored."""

    __tablename__ = "agent_join_tokens"
    __table_args__ = (sa.CheckConstraint("expires_at > created_at", name="validity"),)

    id: str = Field(primary_key=True)  # the public token id (16 hex digits)
    secret_hash: str
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=True)
    zone_id: str | None = optional_fk("zones.id")
    name: str = ""  # the agent's name if the admin chose one
    created_by: str = ""
    created_at: datetime = created_field()
    expires_at: datetime = Field(sa_type=UTCDateTime)
    used_at: datetime | None = maybe_when()
    agent_id: str | None = optional_fk("agents.id", ondelete=SET_NULL)


class AgentEndpoint(TableModel, table=True):
    """A host:port an agent declares in its own config (its inventory report)."""

    __tablename__ = "agent_endpoints"
    __table_args__ = (
        sa.UniqueConstraint("agent_id", "host", "port"),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name="port"),
    )

    id: str = id_field()
    agent_id: str = Field(foreign_key="agents.id", ondelete=CASCADE, index=True)
    host: str
    port: int
    protocol: str = "tcp"
    name: str = ""
    declared: bool = True  # False once the agent stops declaring it
    first_seen_at: datetime = created_field()
    last_reported_at: datetime = created_field()


class Asset(TableModel, table=True):
    """A machine vendors maintain (PLC, HMI, server), reached through ``agent_id`` if set.

    What a vendor may reach on it is its :class:`AssetEndpoint` rows (inventory, never request
    input); ``protocols`` in the policy input is derived from them.
    """

    __tablename__ = "assets"
    __table_args__ = (one_of("criticality", Criticality.ALL),)

    id: str = id_field()
    name: str = Field(unique=True)
    site_id: str = Field(foreign_key="sites.id", ondelete=RESTRICT, index=True)
    zone_id: str = Field(foreign_key="zones.id", ondelete=RESTRICT, index=True)
    criticality: str
    owner_group: str
    labels: dict[str, str] = json_field(dict)
    # Why SET NULL: deleting an agent must leave the asset unreachable, not delete it.
    agent_id: str | None = optional_fk("agents.id", ondelete=SET_NULL)
    created_at: datetime = created_field()
    description: str = Field(default="", sa_column_kwargs={"server_default": ""})
    vendor_notes: str = Field(default="", sa_column_kwargs={"server_default": ""})
    # Set when the plant file removed an asset that has history: it takes no new requests.
    archived_at: datetime | None = maybe_when()


class EndpointProtocol:
    """What an asset endpoint speaks; inspection is chosen by this, never by port number."""

    SSH = "ssh"
    MODBUS = "modbus"
    S7 = "s7"
    OPCUA = "opcua"
    ENIP = "enip"
    DNP3 = "dnp3"
    VNC = "vnc"
    RDP = "rdp"
    HTTPS = "https"
    TCP = "tcp"
    ALL: ClassVar[tuple[str, ...]] = (SSH, MODBUS, S7, OPCUA, ENIP, DNP3, VNC, RDP, HTTPS, TCP)


class AssetEndpoint(TableModel, table=True):
    """One declared host:port of an asset, with its protocol and protocol settings.

    ``settings`` is validated by :func:`sessions.endpoints.validate_settings` (SSH logins per
    operation class, Modbus unit ids and write ranges per operation class and table).
    It is reached through ``agent_id`` (the agent that declares it), else through the asset's
    agent (:func:`route_agent`).
    """

    __tablename__ = "asset_endpoints"
    __table_args__ = (
        sa.UniqueConstraint("asset_id", "name"),
        sa.UniqueConstraint("asset_id", "host", "port"),
        sa.CheckConstraint("port >= 1 AND port <= 65535", name="port"),
        one_of("protocol", EndpointProtocol.ALL),
    )

    id: str = id_field()
    # No separate index: asset_id leads uq_asset_endpoints_asset_id_name.
    asset_id: str = Field(foreign_key="assets.id", ondelete=CASCADE, index=False)
    name: str
    host: str
    port: int
    protocol: str
    settings: dict[str, Any] = json_field(dict)
    created_at: datetime = created_field()
    # Why SET NULL: deleting an agent must leave the endpoint unreachable, not delete it.
    agent_id: str | None = optional_fk("agents.id", ondelete=SET_NULL)


def route_agent(asset: Asset, endpoint: AssetEndpoint) -> str | None:
    """The agent that reaches ``endpoint``: its own, else its asset's (None: unreachable)."""
    return endpoint.agent_id or asset.agent_id


class VendorContract(TableModel, table=True):
    """A vendor's contract covering a site and/or one asset for a validity window."""

    __tablename__ = "vendor_contracts"
    __table_args__ = (
        sa.CheckConstraint("site_id IS NOT NULL OR asset_id IS NOT NULL", name="scope"),
        sa.CheckConstraint("valid_until > valid_from", name="validity"),
    )

    id: str = id_field()
    vendor_org_id: str = Field(foreign_key="vendor_orgs.id", ondelete=RESTRICT, index=True)
    site_id: str | None = optional_fk("sites.id")
    asset_id: str | None = optional_fk("assets.id")
    reference: str
    valid_from: datetime = Field(sa_type=UTCDateTime)
    valid_until: datetime = Field(sa_type=UTCDateTime)
    # Operation classes the contract allows; empty means all of them.
    operation_classes: list[str] = added_list()
    created_at: datetime = created_field()
