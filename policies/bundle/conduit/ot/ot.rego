# The OT operation table: what each operation class may do on the wire.
#
# Classes are ordered read_only < tune < program < firmware. The Modbus/TCP function codes
# follow docs/policy.md ("OT operation table"); FC 43 is allowed for MEI type 14 (read device
# identification) only, which the Modbus inspector enforces. The table is a function with one
# definition per class: regorus evaluates just the matching one, not a whole table object.
package conduit.ot

import rego.v1

class_names := ["read_only", "tune", "program", "firmware"]

# Function code groups (docs/policy.md); class() lists are their unions, spelled out sorted.
modbus_read := [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43]

modbus_register_write := [5, 6, 15, 16, 22, 23] # confined to write_ranges

modbus_file_write := [21] # file records: no register range confines them

modbus_diagnostics := [8]

modbus_umas := [90] # Schneider UMAS: program download, start/stop

modbus_firmware := [125, 126]

class("read_only") := {
	"rank": 0,
	"approvals_required": 1,
	"max_duration_s": 28800,
	"idle_timeout_s": 900,
	"supervise": false,
	"require_mfa": false,
	"modbus_function_codes": [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43],
}

class("tune") := {
	"rank": 1,
	"approvals_required": 1,
	"max_duration_s": 14400,
	"idle_timeout_s": 900,
	"supervise": false,
	"require_mfa": false,
	"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 22, 23, 24, 43],
}

class("program") := {
	"rank": 2,
	"approvals_required": 2,
	"max_duration_s": 7200,
	"idle_timeout_s": 300,
	"supervise": true,
	"require_mfa": true,
	"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90],
}

class("firmware") := {
	"rank": 3,
	"approvals_required": 2,
	"max_duration_s": 3600,
	"idle_timeout_s": 300,
	"supervise": true,
	"require_mfa": true,
	"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90, 125, 126],
}

# write_ranges(class_name, endpoint): the write ranges [{table, first, last[, unit_ids]}] a
# class may use on a Modbus endpoint: those its settings declare for the class (a table with
# no range gets no writes); program and firmware default to the whole address space of the
# coils and holding registers; read_only never writes. The broker validates the settings and
# the decision parser rejects anything malformed.
write_ranges("read_only", _) := []

write_ranges(op, e) := ranges if {
	op != "read_only"
	ranges = e.settings.write_ranges[op]
} else := whole_space if {
	op in ["program", "firmware"]
} else := []

whole_space := [
	{"table": "coils", "first": 0, "last": 65535},
	{"table": "holding_registers", "first": 0, "last": 65535},
]
