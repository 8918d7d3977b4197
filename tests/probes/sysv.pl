# Perl probe: SysV IPC through perl's own IPC::SysV, IPC::Msg and IPC::Semaphore and the
# shmget/shmread/shmwrite builtins (each shmread/shmwrite attaches and detaches the
# segment by id), shared by a parent and its child.
#
# The parent creates a private message queue holding "one"(1), "two"(2), "three"(1), a
# private set of two semaphores {0, 7} and a private 4 KiB segment holding "before". The
# child blocks on semaphore 0 (it is blocked there, or about to be, at gate 1). After gate
# 1 the parent writes "after" into the segment and posts the semaphore; the child reads the
# segment, takes "two" (type 2), answers "child saw <segment>" (type 9), takes 7 from
# semaphore 1 and exits. The parent prints the answer, the semaphores and the messages
# left, in order, then removes everything. Follows the gating protocol of
# tests/probes/gate.h (reached-K is a directory). Exit status 23 when all is well.
use strict;
use warnings;
use IPC::SysV qw(IPC_PRIVATE IPC_CREAT IPC_NOWAIT IPC_RMID S_IRUSR S_IWUSR);
use IPC::Msg;
use IPC::Semaphore;

$| = 1;
my $failures = 0;

sub gate {
    my ($k) = @_;
    print "gate $k\n";
    my $d = $ENV{CR_TEST_GATE};
    return unless defined $d && length $d;
    my $reached = "$d/reached-$k";
    mkdir $reached;
    until (-e "$d/go-$k") {
        mkdir $reached unless -e $reached;
        select(undef, undef, undef, 0.001);
    }
}

sub err {
    print "ERROR: @_\n";
    $failures++;
}

my $q = IPC::Msg->new(IPC_PRIVATE, S_IRUSR | S_IWUSR) or die "msgget: $!";
my $sem = IPC::Semaphore->new(IPC_PRIVATE, 2, S_IRUSR | S_IWUSR | IPC_CREAT) or die "semget: $!";
$sem->setall(0, 7) or die "setall: $!";
my $shm = shmget(IPC_PRIVATE, 4096, S_IRUSR | S_IWUSR) // die "shmget: $!";
shmwrite($shm, "before", 0, 16) or die "shmwrite: $!";
for ([1, "one"], [2, "two"], [1, "three"]) {
    $q->snd($_->[0], $_->[1], 0) or die "msgsnd: $!";
}
# The ids, for the test to clean up after a killed run.
if (open(my $ids, '>', 'ipc-ids.txt')) {
    print $ids "$shm -1 ", $sem->id, " ", $q->id, "\n";
    close $ids;
}
print "created: queue with 3 messages, 2 semaphores, a segment\n";

my $pid = fork() // die "fork: $!";
if ($pid == 0) {
    $sem->op(0, -1, 0) or exit 80;    # blocks until the parent posts
    my $seen = "";
    shmread($shm, $seen, 0, 16) or exit 81;
    $seen =~ s/\0+$//;
    my $buf;
    $q->rcv($buf, 64, 2, 0) or exit 82;
    exit 83 unless $buf eq "two";
    $q->snd(9, "child saw $seen", 0) or exit 84;
    $sem->op(1, -7, 0) or exit 85;
    exit 0;
}
gate(1);
shmwrite($shm, "after", 0, 16) or err("shmwrite: $!");
$sem->op(0, 1, 0) or err("semop: $!");
my $reply;
$q->rcv($reply, 64, 9, 0) or err("msgrcv: $!");
print "reply: $reply\n";
waitpid($pid, 0) == $pid or err("waitpid: $!");
err("child status $?") if $? != 0;
my @vals = $sem->getall;
print "semaphores @vals\n";
my $buf;
while ($q->rcv($buf, 64, 0, IPC_NOWAIT)) {
    print "left: $buf\n";
}
my $st = $q->stat;
print "queue holds ", $st->qnum, " messages\n";
gate(2);
$q->remove or err("msg remove: $!");
$sem->remove or err("sem remove: $!");
shmctl($shm, IPC_RMID, 0) or err("shm remove: $!");
print "removed\n";
gate(3);
exit($failures ? 1 : 23);
