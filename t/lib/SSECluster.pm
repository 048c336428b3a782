package SSECluster;

# Redis Cluster for the cluster tests: 3 primaries and 3 replicas (redis-server with
# cluster-enabled yes), each an SSERedis on a free loopback port in its own temp dir, nothing
# persisted (only the cluster's own nodes.conf, in that dir), joined by redis-cli --cluster create
# ... --cluster-replicas 1. new returns once every node says cluster_state:ok, every node knows
# the other five, and every replica is in sync with its primary.
#
#   my $cl = SSECluster->new;              # 3 primaries, 3 replicas, cluster-node-timeout 1000
#   $cl->seed_urls;                        # "redis://127.0.0.1:P1 redis://127.0.0.1:P2" (2 primaries)
#   $cl->seed_urls(3);                     # three of them
#   $cl->servers;                          # the 6 SSERedis objects (as started)
#   $cl->server($port);                    # the one on $port
#   $cl->primaries;                        # the primaries now (running, not failed), by first slot
#   $cl->replicas;                         # the replicas now
#   $cl->replica_of($port);                # the replica of the primary on $port
#   $cl->node_for_slot($slot);             # the primary owning $slot now
#   $cl->node_for_key($key);               # the primary owning $key's slot
#   $cl->node_for_key($key, $topo);        # the same in a topology read before
#   $cl->shard_of($port);                  # the primary on $port and its replicas
#   SSECluster::slot_of($key);             # CRC16/XMODEM mod 16384, with {hash tag} rules
#   $cl->keyslot($key);                    # CLUSTER KEYSLOT, as Redis computes it
#   $cl->crash($port);                     # SIGKILL
#   my $f = $cl->wait_failover($port);     # {promoted => s, ok => s, primary => SSERedis}
#   $cl->cli($port, 'CLUSTER', 'INFO');    # redis-cli's output, chomped (no -c: MOVED is shown)
#   $cl->topology;                         # CLUSTER NODES as a live node sees it, parsed
#   my @nodes = $cl->nodes(2, server => $locations);   # nginx nodes with sse_redis <seed urls>
#   $cl->diag_logs;                        # the tail of every Redis log

use strict;
use warnings;

use IO::Socket::INET;
use POSIX ();
use Time::HiRes qw(sleep time);
use Test::More ();

use SSETest;
use SSERedis;

# Options: primaries (3), replicas (per primary, 1), node_timeout (ms, 1000), extra_conf (appended
# to every node's redis.conf).
sub new {
    my ($class, %o) = @_;
    my $self = bless {primaries => 3, replicas => 1, node_timeout => 1000, %o}, $class;
    my $t0 = time;
    my $n = $self->{primaries} * (1 + $self->{replicas});
    # A full sync streams the dataset to the replica without touching the disk on either side.
    my $conf = "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\nrepl-diskless-load on-empty-db\n"
             . "cluster-node-timeout $self->{node_timeout}\n" . ($self->{extra_conf} // '');
    $self->{list} = [map { SSECluster::Node->new(extra_conf => $conf) } 1 .. $n];
    $self->create;
    $self->{created_in} = time - $t0;
    return $self;
}

# Seconds new took (starting the servers, creating the cluster, waiting until it is ready).
sub created_in { $_[0]{created_in} }

sub servers { @{ $_[0]{list} } }

sub server {
    my ($self, $port) = @_;
    my ($r) = grep { $_->port == $port } $self->servers;
    return $r;
}

sub cli {
    my ($self, $port, @args) = @_;
    my $r = $self->server($port) or die "no cluster node on :$port";
    return $r->cli(@args);
}

# redis-cli --cluster create: the first nodes become the primaries, redis-cli picks each one's
# replicas among the others (all on 127.0.0.1, so it warns that they share a host and goes on).
sub create {
    my ($self) = @_;
    my @addrs = map { '127.0.0.1:' . $_->port } $self->servers;
    my @cmd = ('redis-cli', '--cluster', 'create', @addrs, '--cluster-replicas', $self->{replicas}, '--cluster-yes');
    my $pid = open(my $fh, '-|') // die "fork: $!";
    if (!$pid) {
        open STDERR, '>&', \*STDOUT;
        exec(@cmd) or POSIX::_exit(127);
    }
    my $out = do { local $/; <$fh> // '' };
    close $fh;
    $self->{create_output} = $out;
    $self->fail_setup("redis-cli --cluster create failed:\n$out") if $? || $out !~ /All 16384 slots covered/;
    $self->wait_ready(30) or $self->fail_setup("the cluster was not ready within 30 s:\n" . $self->why_not_ready);
}

# cluster_state:ok on every running node, every node sees every other (none in handshake, none
# failing), the slots all covered by primaries that every node agrees on, every primary has its
# replicas and every replica's link to its primary is up.
sub ready {
    my ($self) = @_;
    my @running = grep { $_->running } $self->servers;
    my $first;
    for my $r (@running) {
        return 0 unless ($r->info_cluster->{cluster_state} // '') eq 'ok';
        my $topo = $self->parse_nodes($r->cli('CLUSTER', 'NODES')) or return 0;
        return 0 if grep { $_->{flags} =~ /handshake|fail|noaddr/ } grep { $self->server($_->{port}) && $self->server($_->{port})->running } @$topo;
        my $view = join ' ', map { "$_->{port}:$_->{role}:" . join(',', map { "$_->[0]-$_->[1]" } @{ $_->{slots} }) }
                             sort { $a->{port} <=> $b->{port} } grep { $self->server($_->{port})->running } @$topo;
        $first //= $view;
        return 0 unless $view eq $first;
    }
    my @primaries = $self->primaries;
    return 0 unless @primaries == $self->{primaries};
    for my $p (@primaries) {
        my @reps = grep { $_->running } $self->replicas_of($p->port);
        return 0 unless @reps >= 1;
        return 0 if grep { ($_->info('replication')->{master_link_status} // '') ne 'up' } @reps;
    }
    return 1;
}

sub why_not_ready {
    my ($self) = @_;
    return join "\n", map {
        ':' . $_->port . ($_->running ? '' : ' (stopped)') . "\n" . ($_->running ? $_->cli('CLUSTER', 'NODES') : '')
    } $self->servers;
}

sub wait_ready {
    my ($self, $timeout) = @_;
    return SSETest::wait_until(sub { $self->ready }, $timeout // 30);
}

# CLUSTER NODES text as [{id, port, flags, role (master|slave), master (id or -), slots =>
# [[from, to], ...]}]; undef for text that is not CLUSTER NODES.
sub parse_nodes {
    my ($self, $text) = @_;
    my @nodes;
    for my $line (split /\n/, $text) {
        my ($id, $addr, $flags, $master, undef, undef, undef, $link, @slots) = split ' ', $line;
        return undef unless defined $link && $addr =~ /:(\d+)@/;
        my $port = $1;
        my $role = $flags =~ /master/ ? 'master' : $flags =~ /slave/ ? 'slave' : '?';
        my @ranges;
        for (@slots) {
            next if /^\[/;    # a slot being imported or migrated
            my ($from, $to) = /^(\d+)(?:-(\d+))?$/ or next;
            push @ranges, [$from, $to // $from];
        }
        push @nodes, {id => $id, port => $port, flags => $flags, role => $role, master => $master,
                      link => $link, slots => \@ranges};
    }
    return @nodes ? \@nodes : undef;
}

# CLUSTER NODES as the first running node that answers sees it, parsed (see parse_nodes).
sub topology {
    my ($self) = @_;
    for my $r (grep { $_->running } $self->servers) {
        my $topo = $self->parse_nodes($r->cli('CLUSTER', 'NODES'));
        return $topo if $topo;
    }
    die "no cluster node answers CLUSTER NODES";
}

# The primaries now: running, flagged master and not failing, holding slots; sorted by first slot.
sub primaries {
    my ($self) = @_;
    my @p = grep { $_->{role} eq 'master' && $_->{flags} !~ /fail/ && @{ $_->{slots} } && $self->server($_->{port})->running }
            @{ $self->topology };
    return map { $self->server($_->{port}) } sort { $a->{slots}[0][0] <=> $b->{slots}[0][0] } @p;
}

# The replicas now (running).
sub replicas {
    my ($self) = @_;
    return map { $self->server($_->{port}) } sort { $a->{port} <=> $b->{port} }
           grep { $_->{role} eq 'slave' && $self->server($_->{port})->running } @{ $self->topology };
}

# The replicas of the primary on $port (running or not), as a live node sees them.
sub replicas_of {
    my ($self, $port) = @_;
    my $topo = $self->topology;
    my ($p) = grep { $_->{port} == $port } @$topo or return ();
    return map { $self->server($_->{port}) } grep { $_->{master} eq $p->{id} } @$topo;
}

sub replica_of {
    my ($self, $port) = @_;
    my ($r) = grep { $_->running } $self->replicas_of($port);
    return $r;
}

# The primary on $port and its replicas: one shard.
sub shard_of {
    my ($self, $port) = @_;
    return ($self->server($port), $self->replicas_of($port));
}

# The slot ranges the primary on $port serves now.
sub slots_of {
    my ($self, $port) = @_;
    my ($p) = grep { $_->{port} == $port } @{ $self->topology } or return ();
    return @{ $p->{slots} };
}

# The primary that owns $slot now (undef when none does); $topo (from topology) saves asking.
sub node_for_slot {
    my ($self, $slot, $topo) = @_;
    for my $n (@{ $topo // $self->topology }) {
        next unless $n->{role} eq 'master' && $n->{flags} !~ /fail/;
        return $self->server($n->{port}) if grep { $slot >= $_->[0] && $slot <= $_->[1] } @{ $n->{slots} };
    }
    return undef;
}

sub node_for_key { my ($self, $key, $topo) = @_; return $self->node_for_slot(slot_of($key), $topo) }

# CRC16/XMODEM (polynomial 0x1021, initial value 0), the one Redis Cluster uses.
my @CRC16_TABLE = map {
    my $crc = $_ << 8;
    for (1 .. 8) { $crc = ($crc & 0x8000) ? (($crc << 1) ^ 0x1021) : ($crc << 1) }
    $crc & 0xffff;
} 0 .. 255;

sub crc16 {
    my ($bytes) = @_;
    my $crc = 0;
    $crc = (($crc << 8) & 0xff00) ^ $CRC16_TABLE[(($crc >> 8) ^ $_) & 0xff] for unpack 'C*', $bytes;
    return $crc;
}

# The slot of $key (bytes): when it holds a "{" followed later by a "}" with at least one byte
# between the first "{" and the first "}" after it, only those bytes are hashed.
sub slot_of {
    my ($key) = @_;
    utf8::encode($key) if utf8::is_utf8($key);
    my $open = index($key, '{');
    if ($open >= 0) {
        my $close = index($key, '}', $open + 1);
        $key = substr($key, $open + 1, $close - $open - 1) if $close > $open + 1;
    }
    return crc16($key) % 16384;
}

# CLUSTER KEYSLOT <key> on a running node: Redis's own answer, to check slot_of against.
sub keyslot {
    my ($self, $key) = @_;
    my ($r) = grep { $_->running } $self->servers;
    return $r->cli('CLUSTER', 'KEYSLOT', $key);
}

# redis://127.0.0.1:P for the first $n primaries (default 2), space-separated: the arguments of
# sse_redis.
sub seed_urls {
    my ($self, $n) = @_;
    my @p = $self->primaries;
    $n //= 2;
    $n = @p if $n > @p;
    return join ' ', map { $_->url } @p[0 .. $n - 1];
}

# SIGKILL the node on $port, as when its machine dies.
sub crash {
    my ($self, $port) = @_;
    my $r = $self->server($port) or die "no cluster node on :$port";
    # Its replicas as the cluster knows them before: after a failover the old primary has none.
    $self->{crashed_replicas}{$port} = [$self->replicas_of($port)];
    $self->{crashed}{$port} = time;
    return $r->crash;
}

# After crash($port) of a primary: waits until one of its replicas says role:master ("promoted")
# and every running node says cluster_state:ok with all 16384 slots served by live primaries
# ("ok"). Returns {promoted => seconds after the crash, ok => seconds after the crash, primary =>
# the new primary}, or undef after $timeout seconds (default 20); may be called again to wait on
# (the moments already seen are kept).
sub wait_failover {
    my ($self, $port, $timeout) = @_;
    my $t0 = $self->{crashed}{$port} // time;
    my @reps = @{ $self->{crashed_replicas}{$port} // [$self->replicas_of($port)] };
    my $st = $self->{failover}{$port} //= {};
    my $ok = $st->{ok} || SSETest::wait_until(sub {
        if (!$st->{promoted}) {
            for my $r (grep { $_->running } @reps) {
                my @role = split /\n/, $r->cli('ROLE');
                if (($role[0] // '') eq 'master') { @$st{qw(promoted primary)} = (time, $r); last }
            }
            return 0 unless $st->{promoted};
        }
        return 0 if grep { ($_->info_cluster->{cluster_state} // '') ne 'ok' } grep { $_->running } $self->servers;
        return $self->covered == 16384;
    }, $timeout // 20);
    return undef unless $ok;
    $st->{ok} //= time;
    return {promoted => $st->{promoted} - $t0, ok => $st->{ok} - $t0, primary => $st->{primary}};
}

# How many slots running primaries that are not failing serve, as a live node sees it.
sub covered {
    my ($self) = @_;
    my $n = 0;
    for my $p (@{ $self->topology }) {
        next unless $p->{role} eq 'master' && $p->{flags} !~ /fail/ && $self->server($p->{port})->running;
        $n += $_->[1] - $_->[0] + 1 for @{ $p->{slots} };
    }
    return $n;
}

# Starts $n nginx nodes (SSETest objects) whose http{} begins with "sse_redis <seed urls>;" (url
# overrides them); the rest as SSERedis::nodes.
sub nodes {
    my ($self, $n, %o) = @_;
    return SSERedis::nodes($self, $n, %o, url => $o{url} // $self->seed_urls);
}

sub fail_setup {
    my ($self, $why) = @_;
    $self->diag_logs;
    die "$why\n";
}

# Shows the end of every node's log (for a failure): what each saw (FAIL, failover election,
# promotion) and did.
sub diag_logs {
    my ($self, $lines) = @_;
    $lines //= 30;
    for my $r ($self->servers) {
        my @l = grep { !/WARNING Memory overcommit/ } split /\n/, $r->log_text;
        splice @l, 0, @l - $lines if @l > $lines;
        Test::More::diag('cluster node :' . $r->port . ($r->running ? '' : ' (stopped)') . ", its log ends:\n" . join("\n", @l));
    }
}

package SSECluster::Node;

# One cluster node: an SSERedis with cluster-enabled yes and its cluster bus on a port of its own
# (not port + 10000, which may be out of range or taken), held like the client port while the
# node is down.
use parent -norequire, 'SSERedis';

sub new {
    my ($class, %o) = @_;
    $o{bus_port} //= SSETest::free_port();
    $o{extra_conf} = "cluster-enabled yes\ncluster-config-file nodes.conf\ncluster-port $o{bus_port}\n" . ($o{extra_conf} // '');
    return SSERedis::new($class, %o);
}

sub bus_port { $_[0]{bus_port} }

sub hold_port {
    my ($self) = @_;
    my $ok = $self->SUPER::hold_port;
    $self->{bus_holder} = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $self->{bus_port}, Proto => 'tcp')
        unless $self->{bus_holder};
    return $ok;
}

sub release_port {
    my ($self) = @_;
    close $self->{bus_holder} if $self->{bus_holder};
    $self->{bus_holder} = undef;
    return $self->SUPER::release_port;
}

# INFO cluster's fields (cluster_enabled) and CLUSTER INFO's (cluster_state, ...).
sub info_cluster {
    my ($self) = @_;
    my %f;
    for (split /\r?\n/, $self->cli('CLUSTER', 'INFO')) {
        my ($k, $v) = /^(\w+):(.*?)\r?$/ or next;
        $f{$k} = $v;
    }
    return \%f;
}

1;
