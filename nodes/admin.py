from django.contrib import admin

from nodes.models import GPU, HardwareProfile, Node, Operation, Part, StatusChange


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ["name", "last_status", "last_seen", "profile"]
    readonly_fields = ["last_seen", "hardware", "hardware_at", "host_reading", "token_rejected_at"]


class PartInline(admin.TabularInline):
    model = Part


@admin.register(HardwareProfile)
class HardwareProfileAdmin(admin.ModelAdmin):
    inlines = [PartInline]
    list_display = ["name", "is_template"]


@admin.register(Operation)
class OperationAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "node", "status", "requested_by", "created", "finished"]
    list_filter = ["kind", "status"]


admin.site.register(GPU)
admin.site.register(StatusChange)
