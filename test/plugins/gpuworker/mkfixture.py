import os
root='test/fixtures/sysroots/gpupool12'
D=root+'/sys/bus/pci/devices'
os.makedirs(D,exist_ok=True)
def w(p,v):
    os.makedirs(os.path.dirname(p),exist_ok=True)
    open(p,'w').write(v+'\n')
def link(p,t):
    os.makedirs(os.path.dirname(p),exist_ok=True)
    if os.path.lexists(p): os.remove(p)
    os.symlink(t,p)
for i in range(12):
    bdf='0000:%02x:00.0'%(3+i)
    d=D+'/'+bdf
    card=(i*5)%12
    w(d+'/vendor','0x1002'); w(d+'/device','0x67df'); w(d+'/class','0x030000')
    w(d+'/uevent','DRIVER=amdgpu\nPCI_CLASS=30000\nPCI_ID=1002:67DF\nPCI_SLOT_NAME='+bdf)
    link(d+'/driver','../../../../bus/pci/drivers/amdgpu')
    os.makedirs(d+'/drm/card%d'%card,exist_ok=True)
    os.makedirs(d+'/drm/renderD%d'%(128+card),exist_ok=True)
    w(d+'/drm/card%d/dev'%card,'226:%d'%card)
    w(d+'/drm/renderD%d/dev'%(128+card),'226:%d'%(128+card))
    hw=d+'/hwmon/hwmon%d'%(card+2)
    w(hw+'/name','amdgpu')
    w(hw+'/temp1_input',str((40+i)*1000+500))
    w(hw+'/power1_average',str((50+i)*1000000+250000))
    w(hw+'/fan1_input',str(1000+10*i))
    w(d+'/gpu_busy_percent',str(i*7%101))
    w(d+'/mem_info_vram_total','8589934592')
    w(d+'/mem_info_vram_used',str((i+1)*100*1048576))
    w(d+'/power/runtime_status','suspended' if i==5 else 'active')
    # the HDMI audio function of the card: AMD, not display
    a=D+'/0000:%02x:00.1'%(3+i)
    w(a+'/vendor','0x1002'); w(a+'/device','0xaaf0'); w(a+'/class','0x040300')
    w(a+'/uevent','DRIVER=snd_hda_intel')
# a 13th RX 580 bound to vfio-pci: reported as passthrough, not driven
d=D+'/0000:0f:00.0'
w(d+'/vendor','0x1002'); w(d+'/device','0x67df'); w(d+'/class','0x030000')
w(d+'/uevent','DRIVER=vfio-pci\nPCI_CLASS=30000')
link(d+'/driver','../../../../bus/pci/drivers/vfio-pci')
w(d+'/power/runtime_status','active')
# a host bridge that is not a GPU
d=D+'/0000:00:00.0'
w(d+'/vendor','0x8086'); w(d+'/device','0x1237'); w(d+'/class','0x060000')
w(root+'/README','Twelve RX 580 (amdgpu, card0..card11 in an order unlike the PCI order, so card10/card11\nexist and gpu<i> must come from the sorted address), their HDMI audio functions, gpu5\nruntime-suspended, a 13th RX 580 bound to vfio-pci at 0000:0f:00.0, an Intel host bridge.\nRegenerate nothing by hand: values are i-dependent (temp (40+i).5 C, power (50+i).25 W,\nfan 1000+10i rpm, busy 7i%101, vram used (i+1)*100 MiB of 8 GiB).')
