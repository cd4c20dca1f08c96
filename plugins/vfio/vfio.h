/* vfio.h — the vfio plugin's shared types: the PCI inventory (pci.c, from libpci and a
 * few sysfs/proc files), the plan built from it (plan.c: selection, IOMMU group safety,
 * binding files, hostpci assignments, all as JSON), and the applier (apply.c: atomic
 * writes with backups, the store's record of what was written, the qm and
 * update-initramfs calls, rollback). vfio.c holds the descriptor and the hooks. */
#ifndef PLUGINS_VFIO_VFIO_H
#define PLUGINS_VFIO_VFIO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>
#include <organism/plugin.h>
#include <organism/text.h>

#define VFIO_HOSTPCI_MAX 16
#define VFIO_ADDR_LEN    16 /* "0000:03:00.0" + NUL */

/* What a device is to the host, for the loud flags and the bridge rule. */
enum {
        VFIO_ROLE_ROOT_DISK = 1u << 0,     /* the controller of the disk holding / */
        VFIO_ROLE_MGMT_NIC = 1u << 1,      /* the NIC of the default route */
        VFIO_ROLE_BOOT_DISPLAY = 1u << 2,  /* boot_vga = 1 */
        VFIO_ROLE_UPSTREAM = 1u << 3,      /* a bridge one of the above sits behind */
        VFIO_ROLE_STORAGE_GUESS = 1u << 4, /* a storage controller while the root disk is unresolved */
};

typedef struct vfio_dev {
        char addr[VFIO_ADDR_LEN];
        unsigned domain, bus, dev, func;
        uint16_t vendor, device;
        uint16_t cls;          /* base class << 8 | subclass: 0x0300 VGA, 0x0403 audio, 0x0604 bridge */
        char driver[32];       /* "" = none bound */
        char group[16];        /* "" = no IOMMU group */
        int boot_vga;          /* -1 = no boot_vga file */
        char reset_method[48]; /* display functions: their reset_method file, "" = none */
        unsigned roles;
        bool selected;
} vfio_dev;

typedef struct vfio_inventory {
        vfio_dev *devs; /* sorted by address */
        size_t n_devs;
        bool iommu_on; /* /sys/kernel/iommu_groups has entries */
        size_t n_groups;
        char cmdline[512]; /* the iommu-related tokens of /proc/cmdline, space-separated */
        bool acs_override; /* pcie_acs_override on the command line (never written by us) */
        char kernel[64];   /* /proc/sys/kernel/osrelease, "" = unknown */
        int kernel_major, kernel_minor;
        char root_source[128]; /* the device of "/" in /proc/mounts */
        char root_ctrl[VFIO_ADDR_LEN];
        char root_note[256]; /* why the controller is not known, when it is not */
        char nic_iface[32];
        char nic_ctrl[VFIO_ADDR_LEN];
        char nic_note[256];
        bool vendor_reset;     /* /sys/module/vendor_reset exists: the module is loaded */
        char pci_warning[256]; /* libpci's first warning of the enumeration, "" = none */
        uint64_t enumerate_us;
} vfio_inventory;

typedef enum vfio_binding_mode { VFIO_BIND_AUTO, VFIO_BIND_IDS, VFIO_BIND_OVERRIDE } vfio_binding_mode;

typedef struct vfio_settings {
        int64_t vmid; /* 0 = no VM: no hostpci plan */
        char vmid_text[24];
        uint16_t vendor;
        char **gpus; /* explicit list (normalised "0000:BB:DD.F"), NULL = auto */
        size_t n_gpus;
        char etc_dir[256]; /* as on the real system, under the sysroot */
        char mgmt_nic[32]; /* "" = the default route's interface */
        vfio_binding_mode binding;
        bool initramfs;
        uint64_t qm_timeout_ms, initramfs_timeout_ms;
} vfio_settings;

typedef struct vfio_job vfio_job;

typedef struct vfio {
        const org_host *host;
        org_ctx *ctx;
        vfio_settings cfg;
        vfio_inventory inv;
        bool has_inv;
        char *qm_config;    /* the last `qm config VMID` output, NULL = none */
        char qm_error[256]; /* why there is none */
        json_t *last_plan;  /* the last plan computed (owned) */
        char *last_state;   /* the last vfio.state payload published (without ts) */
        vfio_job *job;      /* the verb or start refresh in flight, at most one */
        /* a verb that arrived during the start refresh runs after it */
        char *pending_reply;
        int pending_kind; /* 1 plan, 2 apply, 3 rollback */
        bool pending_replace;
        uint64_t inv_fp; /* fingerprint of the tree v->inv was read from */
        bool has_fp;
        bool store_ok;
        int64_t active; /* rows of the store not rolled back */
        uint64_t published;
} vfio;

/* pci.c */
/* Fills *inv from libpci (tree: sysfs_path) and the sysroot's proc/sys files; libpci
 * errors never exit the process. On failure err holds the reason. inv->devs is
 * malloc'd (vfio_inventory_done frees it). */
int vfio_inventory_take(vfio *v, vfio_inventory *inv, char *err, size_t err_size);
void vfio_inventory_done(vfio_inventory *inv);
/* Parses "[DDDD:]BB:DD.F" into "DDDD:BB:DD.F"; -EINVAL when it is not one. */
int vfio_parse_addr(const char *s, char ret[VFIO_ADDR_LEN]);
/* A cheap fingerprint of the PCI tree: the functions and their driver links (no libpci,
 * no realpath). The same value: the inventory read last still holds. */
int vfio_pci_fingerprint(vfio *v, uint64_t *ret);
/* libpci's sysfs enumeration alone (for the benchmark): n devices found, or -errno. */
int vfio_pci_scan(const char *sysfs_path, vfio_dev **ret_devs, size_t *ret_n, char *err, size_t err_size);

/* plan.c */
/* Builds the plan (a JSON object, *ret owned by the caller) from the inventory, the
 * settings, the VM's `qm config` output (NULL: not known, with qm_error saying why) and
 * the files now under etc_dir. Marks inv's selected devices. Never fails but on ENOMEM. */
int vfio_plan_build(vfio *v, vfio_inventory *inv, const char *qm_config, const char *qm_error, bool replace,
                    json_t **ret);
/* The vfio.state payload (without ts) from the inventory and a plan (may be NULL). */
json_t *vfio_state_json(vfio *v, const vfio_inventory *inv, const json_t *plan);
/* The file contents the plan wants (static, small). */
int vfio_plan_files(vfio *v, const vfio_inventory *inv, const json_t *cards, bool use_ids, const char *ids,
                    json_t **ret_files);
/* True when every function of every planned card shows vfio-pci as its driver. */
bool vfio_all_bound(const vfio_inventory *inv);

/* apply.c */
int vfio_store_open(vfio *v);
bool vfio_store_active(vfio *v); /* something written by apply and not rolled back */
/* The verbs that run commands: the answer goes to reply_subject when done. */
int vfio_job_plan(vfio *v, const char *reply_subject, bool apply, bool replace);
int vfio_job_rollback(vfio *v, const char *reply_subject);
/* At start: qm config, then the state with the hostpci mapping (no reply). */
int vfio_job_refresh(vfio *v);
void vfio_job_free(vfio_job *j);
/* Writes path (as on the system, sysroot prefixed) atomically: temp file, fsync,
 * rename, fsync of the folder. */
int vfio_write_atomic(vfio *v, const char *path, const char *content);
/* Reads the file (as on the system); -ENOENT when absent. */
int vfio_read(vfio *v, const char *path, char **ret);

/* vfio.c */
void vfio_rfc3339(vfio *v, char *buf, size_t size);
void vfio_respond(vfio *v, const char *reply_subject, json_t *o); /* steals o */
/* Re-reads the inventory; publishes vfio.state when it changed (or force). */
void vfio_refresh_state(vfio *v, bool force);

#endif
