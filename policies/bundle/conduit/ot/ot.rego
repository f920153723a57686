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

# S7comm operations (sessions/ot/s7.py names them; set-up always passes): reads; Write Var
# (confined to write ranges); block upload/download and block management; and what only an
# explicit firmware class may do: PLC stop/start, clock setting, passwords, programmer
# commands and any operation the inspector does not know.
s7_read := ["block_info", "cyclic_read", "read_clock", "read_var", "szl_read"]

s7_write := ["write_var"]

s7_program := ["download", "plc_control", "upload"]

s7_firmware := ["password", "plc_start", "plc_stop", "programmer", "set_clock", "unknown"]

# EtherNet/IP + CIP operations (sessions/ot/enip.py; session registration and connection
# set-up always pass): tag and attribute reads; tag writes; attribute writes (configuration);
# reset/start/stop and unknown services.
enip_read := ["read_attribute", "read_tag"]

enip_write := ["write_tag"]

enip_program := ["write_attribute"]

enip_firmware := ["reset", "start", "stop", "unknown"]

class("read_only") := {
	"rank": 0,
	"approvals_required": 1,
	"max_duration_s": 28800,
	"idle_timeout_s": 900,
	"supervise": false,
	"require_mfa": false,
	"modbus_function_codes": [1, 2, 3, 4, 7, 11, 12, 17, 20, 24, 43],
	"s7_operations": ["block_info", "cyclic_read", "read_clock", "read_var", "szl_read"],
	"enip_operations": ["read_attribute", "read_tag"],
}

class("tune") := {
	"rank": 1,
	"approvals_required": 1,
	"max_duration_s": 14400,
	"idle_timeout_s": 900,
	"supervise": false,
	"require_mfa": false,
	"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 22, 23, 24, 43],
	"s7_operations": ["block_info", "cyclic_read", "read_clock", "read_var", "szl_read", "write_var"],
	"enip_operations": ["read_attribute", "read_tag", "write_tag"],
}

class("program") := {
	"rank": 2,
	"approvals_required": 2,
	"max_duration_s": 7200,
	"idle_timeout_s": 300,
	"supervise": true,
	"require_mfa": true,
	"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90],
	"s7_operations": ["block_info", "cyclic_read", "download", "plc_control", "read_clock", "read_var", "szl_read", "upload", "write_var"],
	"enip_operations": ["read_attribute", "read_tag", "write_attribute", "write_tag"],
}

class("firmware") := {
	"rank": 3,
	"approvals_required": 2,
	"max_duration_s": 3600,
	"idle_timeout_s": 300,
	"supervise": true,
	"require_mfa": true,
	"modbus_function_codes": [1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 15, 16, 17, 20, 21, 22, 23, 24, 43, 90, 125, 126],
	"s7_operations": [
		"block_info", "cyclic_read", "download", "password", "plc_control", "plc_start", "plc_stop",
		"programmer", "read_clock", "read_var", "set_clock", "szl_read", "unknown", "upload", "write_var",
	],
	"enip_operations": ["read_attribute", "read_tag", "reset", "start", "stop", "unknown", "write_attribute", "write_tag"],
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

# s7_write_ranges(class_name, endpoint): the byte ranges [{area, db, first, last}] a class may
# write with Write Var on an S7 endpoint: those its settings declare for the class; program
# and firmware default to every area (any DB: db null); read_only never writes.
s7_write_ranges("read_only", _) := []

s7_write_ranges(op, e) := ranges if {
	op != "read_only"
	ranges = e.settings.write_ranges[op]
} else := s7_whole_space if {
	op in ["program", "firmware"]
} else := []

s7_whole_space := [{"area": a, "db": null, "first": 0, "last": 65535} | some a in ["C", "DB", "I", "M", "Q", "T"]]
