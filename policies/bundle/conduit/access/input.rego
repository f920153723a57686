# Input checks: is the input document well formed, and if not, what exactly is wrong.
#
# well_formed(input) is the fast check on every decision. Only when it fails is `malformed`
# evaluated, naming every missing or ill-typed field ("input.user.sub is missing").
# Lists (roles, groups, amr, approvers) must be arrays; non-string entries never match.
package conduit.access

import rego.v1

import data.conduit.calendar

# A rule (evaluated once per decision), as both the allow and the deny path need it.
input_ok if well_formed(input)

well_formed(inp) if {
	u = inp.user
	is_string(u.sub)
	u.sub != ""
	is_array(u.roles)
	is_array(u.groups)
	is_array(u.amr)
	type_name(object.get(u, "vendor_org", null)) in ["null", "string"]
	a = inp.asset
	is_string(a.name)
	a.name != ""
	is_string(a.site)
	a.site != ""
	a.purdue_level in [0, 1, 2, 3, 4, 5]
	a.criticality in ["low", "medium", "high", "critical"]
	is_string(a.owner_group)
	a.owner_group != ""
	inp.action.kind in ["ssh", "sftp", "tcp", "web_terminal", "request", "approve"]
	inp.action.operation_class in ["read_only", "tune", "program", "firmware"]
	is_boolean(inp.context.agent_online)
	grant_well_formed(object.get(inp, "grant", null), inp.context.now)
}

# The grant is optional: null or absent means no grant; present, every field is required.
grant_well_formed(null, now) if calendar.valid_all([now])

grant_well_formed(g, now) if {
	is_string(g.id)
	g.id != ""
	is_string(g.requester)
	g.requester != ""
	is_array(g.approvers)
	g.state in ["pending", "approved", "active", "expired", "revoked", "denied", "cancelled"]
	is_boolean(g.maintenance_window_only)
	calendar.valid_all([now, g.starts_at, g.ends_at])
}

# ---- the slow path: which field is wrong -----------------------------------------------------

# section -> field -> expected type. Only fields the rules read are required.
required := {
	"user": {"sub": "text", "roles": "list", "groups": "list", "amr": "list", "vendor_org": "optional_text"},
	"asset": {"name": "text", "site": "text", "purdue_level": "level", "criticality": "criticality", "owner_group": "text"},
	"action": {"kind": "kind", "operation_class": "operation_class"},
	"context": {"now": "time", "agent_online": "boolean"},
}

grant_fields := {
	"id": "text", "requester": "text", "approvers": "list", "starts_at": "time",
	"ends_at": "time", "state": "grant_state", "maintenance_window_only": "boolean",
}

expected := {
	"text": "a non-empty string",
	"list": "a list of strings",
	"optional_text": "a string or null",
	"level": "an integer 0-5",
	"criticality": "one of low, medium, high, critical",
	"kind": "one of ssh, sftp, tcp, web_terminal, request, approve",
	"operation_class": "one of read_only, tune, program, firmware",
	"time": "an RFC 3339 timestamp like 2025-03-04T21:30:00Z",
	"boolean": "true or false",
	"grant_state": "one of pending, approved, active, expired, revoked, denied, cancelled",
}

malformed contains sprintf("input.%s is missing", [section]) if {
	some section, _ in required
	object.get(input, section, null) == null
}

malformed contains sprintf("input.%s must be an object", [section]) if {
	some section, _ in required
	value := object.get(input, section, null)
	value != null
	not is_object(value)
}

malformed contains problem if {
	some section, fields in required
	is_object(input[section])
	some name, type in fields
	value := object.get(input[section], name, null)
	not has_type(value, type)
	problem := field_problem(section, name, value, type)
}

malformed contains "input.grant must be an object or null" if {
	value := object.get(input, "grant", null)
	value != null
	not is_object(value)
}

malformed contains problem if {
	is_object(input.grant)
	some name, type in grant_fields
	value := object.get(input.grant, name, null)
	not has_type(value, type)
	problem := field_problem("grant", name, value, type)
}

# concat, not sprintf: rego-cpp's sprintf renders a string literal passed in as an argument
# (field_problem("grant", ...)) with JSON quotes.
field_problem(section, name, null, _) := concat("", ["input.", section, ".", name, " is missing"])

field_problem(section, name, value, type) := concat("", ["input.", section, ".", name, " must be ", expected[type]]) if {
	value != null
}

has_type(v, "text") if {
	is_string(v)
	v != ""
}

has_type(v, "list") if is_array(v)

has_type(null, "optional_text") := true

has_type(v, "optional_text") if is_string(v)

has_type(v, "level") if v in {0, 1, 2, 3, 4, 5}

has_type(v, "criticality") if v in {"low", "medium", "high", "critical"}

has_type(v, "kind") if v in {"ssh", "sftp", "tcp", "web_terminal", "request", "approve"}

has_type(v, "operation_class") if v in {"read_only", "tune", "program", "firmware"}

has_type(v, "time") if calendar.valid_all([v])

has_type(v, "boolean") if is_boolean(v)

has_type(v, "grant_state") if v in {"pending", "approved", "active", "expired", "revoked", "denied", "cancelled"}

# Deny-path facts: rules, so each is evaluated once however many deny rules use it. They
# tolerate malformed input (never an evaluation error).
checked_now := calendar.ns(input.context.now) if calendar.valid_all([input.context.now])

grant_times_valid if calendar.valid_all([input.grant.starts_at, input.grant.ends_at])

is_connection if input.action.kind in ["ssh", "sftp", "tcp", "web_terminal"]

default asset_name := "the asset"

asset_name := input.asset.name if {
	is_string(input.asset.name)
	input.asset.name != ""
}

default grant_id := "(no id)"

grant_id := input.grant.id if {
	is_string(input.grant.id)
	input.grant.id != ""
}
