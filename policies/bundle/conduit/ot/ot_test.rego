# Tests of the OT operation table (package conduit.ot).
package conduit.ot_test

import rego.v1

import data.conduit.ot

test_classes_are_ordered if {
	[ot.class(c).rank | some c in ot.class_names] == [0, 1, 2, 3]
}

test_class_function_codes_follow_the_table if {
	ot.class("read_only").modbus_function_codes == sort(ot.modbus_read)
	ot.class("tune").modbus_function_codes == sort(array.concat(ot.modbus_read, ot.modbus_register_write))
	ot.class("program").modbus_function_codes == sort(array.concat(
		array.concat(ot.modbus_read, ot.modbus_register_write),
		array.concat(ot.modbus_file_write, ot.modbus_umas),
	))
	ot.class("firmware").modbus_function_codes == sort(array.concat(
		array.concat(ot.modbus_read, ot.modbus_register_write),
		array.concat(
			array.concat(ot.modbus_file_write, ot.modbus_diagnostics),
			array.concat(ot.modbus_umas, ot.modbus_firmware),
		),
	))
}

test_each_class_includes_the_lower_ones if {
	every i in numbers.range(1, 3) {
		lower := ot.class(ot.class_names[i - 1])
		higher := ot.class(ot.class_names[i])
		every fc in lower.modbus_function_codes {
			fc in higher.modbus_function_codes
		}
		lower.approvals_required <= higher.approvals_required
		lower.max_duration_s > higher.max_duration_s
	}
}

test_unknown_class_is_undefined if {
	not ot.class("write")
}

test_write_ranges_come_from_the_endpoint_per_table if {
	coils := {"table": "coils", "first": 0, "last": 15}
	regs := {"table": "holding_registers", "first": 10, "last": 30, "unit_ids": [1]}
	plc := {"protocol": "modbus", "settings": {"write_ranges": {"tune": [coils, regs]}}}
	bare := {"protocol": "modbus", "settings": {}}
	ot.write_ranges("read_only", plc) == []
	ot.write_ranges("tune", plc) == [coils, regs]
	ot.write_ranges("tune", bare) == []
	ot.write_ranges("program", plc) == ot.whole_space
	ot.write_ranges("firmware", bare) == ot.whole_space
	{r.table | some r in ot.whole_space} == {"coils", "holding_registers"}
}

test_s7_operations_follow_the_table if {
	ot.class("read_only").s7_operations == sort(ot.s7_read)
	ot.class("tune").s7_operations == sort(array.concat(ot.s7_read, ot.s7_write))
	ot.class("program").s7_operations == sort(array.concat(array.concat(ot.s7_read, ot.s7_write), ot.s7_program))
	ot.class("firmware").s7_operations == sort(array.concat(
		array.concat(ot.s7_read, ot.s7_write),
		array.concat(ot.s7_program, ot.s7_firmware),
	))
}

test_enip_operations_follow_the_table if {
	ot.class("read_only").enip_operations == sort(ot.enip_read)
	ot.class("tune").enip_operations == sort(array.concat(ot.enip_read, ot.enip_write))
	ot.class("program").enip_operations == sort(array.concat(array.concat(ot.enip_read, ot.enip_write), ot.enip_program))
	ot.class("firmware").enip_operations == sort(array.concat(
		array.concat(ot.enip_read, ot.enip_write),
		array.concat(ot.enip_program, ot.enip_firmware),
	))
}

test_stop_and_start_only_with_the_firmware_class if {
	every c in ["read_only", "tune", "program"] {
		not "plc_stop" in ot.class(c).s7_operations
		not "plc_start" in ot.class(c).s7_operations
		not "stop" in ot.class(c).enip_operations
		not "reset" in ot.class(c).enip_operations
	}
	"plc_stop" in ot.class("firmware").s7_operations
	"stop" in ot.class("firmware").enip_operations
}

test_each_class_includes_the_lower_ones_s7_enip if {
	every i in numbers.range(1, 3) {
		lower := ot.class(ot.class_names[i - 1])
		higher := ot.class(ot.class_names[i])
		every op in lower.s7_operations {
			op in higher.s7_operations
		}
		every op in lower.enip_operations {
			op in higher.enip_operations
		}
	}
}

test_s7_write_ranges_come_from_the_endpoint if {
	db1 := {"area": "DB", "db": 1, "first": 0, "last": 15}
	plc := {"protocol": "s7", "settings": {"write_ranges": {"tune": [db1]}}}
	bare := {"protocol": "s7", "settings": {}}
	ot.s7_write_ranges("read_only", plc) == []
	ot.s7_write_ranges("tune", plc) == [db1]
	ot.s7_write_ranges("tune", bare) == []
	ot.s7_write_ranges("program", bare) == ot.s7_whole_space
	{r.area | some r in ot.s7_whole_space} == {"C", "DB", "I", "M", "Q", "T"}
}
