# Obligations: what the enforcement point must do when it acts on an allow.
#
# Derived from the operation class (data.conduit.ot.class), the asset's Purdue level and
# criticality, and for connections under a grant the grant's end. A deny carries fixed,
# restrictive obligations.
package conduit.access

import rego.v1

import data.conduit.calendar
import data.conduit.ot

denied_obligations := {
	"record": "strict",
	"max_duration_s": null,
	"idle_timeout_s": null,
	"approvals_required": 0,
	"require_mfa": false,
	"modbus": {"allow_function_codes": [], "write_ranges": [], "unit_ids": null},
	"rate_limit_rps": null,
	"supervise": false,
	"protocols": {},
}

granted_obligations(inp, grant_ends_ns, now) := {
	"record": record_mode(level, inp.asset.criticality),
	"max_duration_s": max_duration_s(c.max_duration_s, grant_ends_ns, now),
	"idle_timeout_s": c.idle_timeout_s,
	"approvals_required": c.approvals_required,
	"require_mfa": require_mfa(level, c.require_mfa),
	"modbus": {
		"allow_function_codes": c.modbus_function_codes,
		"write_ranges": modbus_write_ranges(inp, op),
		"unit_ids": modbus_unit_ids(inp),
	},
	"rate_limit_rps": rate_limit_rps(level),
	"supervise": c.supervise,
	"protocols": {
		"s7": {"allow": c.s7_operations, "write_ranges": s7_write_ranges(inp, op)},
		"enip": {"allow": c.enip_operations},
	},
} if {
	op := inp.action.operation_class
	c := ot.class(op)
	level := inp.asset.purdue_level
}

# Strict recording (a recording failure ends the session) near the process or when critical.
record_mode(level, criticality) := "strict" if level <= 2
else := "strict" if criticality in ["high", "critical"]
else := "best_effort"

# The class's limit; for a connection under a grant, never past the grant's end.
max_duration_s(limit, null, _) := limit

max_duration_s(limit, ends_ns, now) := min([limit, ceil((ends_ns - now) / 1000000000)]) if ends_ns != null

require_mfa(level, by_class) := true if level in [1, 2]
else := by_class

rate_limit_rps(level) := 10 if level <= 1
else := 50

# Modbus write ranges, per table: a connection gets those its endpoint declares for the class;
# a request or approval shows those of every Modbus endpoint it names. None for other protocols.
modbus_write_ranges(inp, op) := ot.write_ranges(op, e) if {
	inp.action.kind == "tcp"
	e = connection_endpoint(inp)
	e.protocol == "modbus"
} else := ranges if {
	inp.action.kind in ["request", "approve"]
	ranges := [r | some e in requested_endpoints(inp); e.protocol == "modbus"; some r in ot.write_ranges(op, e)]
} else := []

# The unit ids a connection's Modbus endpoint declares (null: any unit).
modbus_unit_ids(inp) := units if {
	inp.action.kind == "tcp"
	e = connection_endpoint(inp)
	e.protocol == "modbus"
	units = e.settings.unit_ids
} else := null

# S7 Write Var ranges: a connection gets those its S7 endpoint declares for the class.
s7_write_ranges(inp, op) := ot.s7_write_ranges(op, e) if {
	inp.action.kind == "tcp"
	e = connection_endpoint(inp)
	e.protocol == "s7"
} else := []
