package SSESentinel;

# Redis as Sentinel runs it, for the failover tests: a primary, its replica(s) and three sentinels
# (redis-server --sentinel: the binary Debian's redis-sentinel package links to), each an SSERedis
# on a free loopback port in its own temp dir, nothing persisted. new returns once the set is
# ready to fail over: the replicas in sync, and every sentinel knowing the primary, the replicas
# and the other sentinels.
#
#   my $set = SSESentinel->new;             # mymaster: 1 primary, 1 replica, 3 sentinels
#   $set->url;                              # redis-sentinel://127.0.0.1:S1,127.0.0.1:S2,127.0.0.1:S3/mymaster
#   $set->url(first => $addr, db => 2);     # $addr in front of the sentinels; ?db=2
#   $set->primary; $set->replicas;          # SSERedis objects, as the set started
#   $set->sentinels;                        # SSESentinel::Sentinel objects (SSERedis's methods)
#   $set->master_addrs;                     # each sentinel's get-master-addr-by-name: "127.0.0.1:P" or undef
#   $set->refused_address;                  # "127.0.0.1:P" where connections are refused
#   my @nodes = $set->nodes(2, server => $locations);   # nginx nodes with sse_redis $set->url
#   $set->diag_logs;                        # the tail of every Redis and sentinel log

use strict;
use warnings;

use IO::Socket::INET;
use Time::HiRes qw(sleep time);
use Test::More ();

use SSETest;
use SSERedis;

# Options: name (mymaster), replicas (1), sentinels (3), quorum (2), down_after (ms, 1000),
# failover_timeout (ms, 3000).
sub new {
    my ($class, %o) = @_;
    my $self = bless {name => 'mymaster', replicas => 1, sentinels => 3, quorum => 2, down_after => 1000,
                      failover_timeout => 3000, %o}, $class;
    # A full sync streams the dataset to the replica without touching the disk on either side.
    my $repl = "repl-diskless-sync yes\nrepl-diskless-sync-delay 0\nrepl-diskless-load on-empty-db\n";
    $self->{primary} = SSERedis->new(extra_conf => $repl);
    my $p = $self->{primary}->port;
    $self->{replica_list} = [map { SSERedis->new(extra_conf => $repl . "replicaof 127.0.0.1 $p\n") } 1 .. $self->{replicas}];
    $self->wait_replicated;
    $self->{sentinel_list} = [map {
        SSESentinel::Sentinel->new(master => [$self->{name}, $p, $self->{quorum}], down_after => $self->{down_after},
                                   failover_timeout => $self->{failover_timeout})
    } 1 .. $self->{sentinels}];
    $self->wait_sentinels_ready;
    return $self;
}

sub name { $_[0]{name} }
sub primary { $_[0]{primary} }
sub replicas { @{ $_[0]{replica_list} } }
sub sentinels { @{ $_[0]{sentinel_list} } }

# Every Redis (not sentinel) of the set, primary first.
sub servers { my ($self) = @_; return ($self->{primary}, $self->replicas) }

# The Redis of the set on $port (undef when none).
sub server {
    my ($self, $port) = @_;
    my ($r) = grep { $_->port == $port } $self->servers;
    return $r;
}

# redis-sentinel://127.0.0.1:S1,...,127.0.0.1:Sn/<name>[?db=N]; first => "host:port" is put in
# front of the sentinels; user/password as in SSERedis::url.
sub url {
    my ($self, %o) = @_;
    my @addrs = map { '127.0.0.1:' . $_->port } $self->sentinels;
    unshift @addrs, $o{first} if defined $o{first};
    my $auth = '';
    if (defined $o{user}) {
        $auth = "$o{user}:" . ($o{password} // '') . '@';
    } elsif (defined $o{password}) {
        $auth = ":$o{password}\@";
    }
    my $url = "redis-sentinel://$auth" . join(',', @addrs) . "/$self->{name}";
    $url .= "?db=$o{db}" if defined $o{db};
    return $url;
}

# A loopback address where nothing listens: a socket is bound there (never listening) so that
# connections are refused and no other test takes the port while the set lives.
sub refused_address {
    my ($self) = @_;
    if (!$self->{refuser}) {
        for (1 .. 50) {
            my $port = SSETest::free_port();
            my $s = IO::Socket::INET->new(LocalAddr => '127.0.0.1', LocalPort => $port, Proto => 'tcp') or next;
            $self->{refuser} = $s;
            last;
        }
        die "no port to hold" unless $self->{refuser};
    }
    return '127.0.0.1:' . $self->{refuser}->sockport;
}

# Starts $n nginx nodes (SSETest objects) whose http{} begins with "sse_redis <url>;" (url
# defaults to $self->url); the rest as SSERedis::nodes.
sub nodes {
    my ($self, $n, %o) = @_;
    return SSERedis::nodes($self, $n, %o, url => $o{url} // $self->url);
}

# The primary's address as each sentinel reports it (SENTINEL get-master-addr-by-name):
# "host:port", or undef for a sentinel that does not answer it.
sub master_addrs {
    my ($self) = @_;
    return map {
        my @l = split /\n/, $_->cli('SENTINEL', 'get-master-addr-by-name', $self->{name});
        (@l == 2 && $l[1] =~ /^\d+$/) ? "$l[0]:$l[1]" : undef;
    } $self->sentinels;
}

# SENTINEL MASTER <name> as {field => value} from sentinel $s.
sub master_state {
    my ($self, $s) = @_;
    my @l = split /\n/, $s->cli('SENTINEL', 'MASTER', $self->{name});
    return {} if @l % 2;
    return {@l};
}

# Each replica reports its link to the primary up, the primary counts them all online, and a key
# written on the primary has reached every replica.
sub wait_replicated {
    my ($self) = @_;
    my $n = $self->replicas;
    my $probe = 'sse-test-probe:' . $self->{primary}->port;
    my $ok = SSETest::wait_until(sub {
        return 0 if grep { ($_->info('replication')->{master_link_status} // '') ne 'up' } $self->replicas;
        my $p = $self->{primary}->info('replication');
        return 0 unless ($p->{connected_slaves} // 0) == $n;
        return 0 if grep { ($p->{"slave$_"} // '') !~ /state=online/ } 0 .. $n - 1;
        $self->{primary}->cli('SET', $probe, 'x') eq 'OK' or return 0;
        return !grep { $_->cli('GET', $probe) ne 'x' } $self->replicas;
    }, 15);
    $self->fail_setup('the replicas did not sync with the primary within 15 s') unless $ok;
    $self->{primary}->cli('DEL', $probe);
}

# Every sentinel sees the primary up, all the replicas and every other sentinel, and can reach
# its quorum (SENTINEL CKQUORUM). Sentinels find each other through hello messages sent every
# 2 s, so this takes a few seconds.
sub wait_sentinels_ready {
    my ($self) = @_;
    my $n = $self->sentinels;
    my $r = $self->replicas;
    my $ok = SSETest::wait_until(sub {
        for my $s ($self->sentinels) {
            my $m = $self->master_state($s);
            return 0 unless ($m->{flags} // '') eq 'master' && ($m->{'num-slaves'} // -1) == $r
                && ($m->{'num-other-sentinels'} // -1) == $n - 1;
        }
        return !grep { $_->cli('SENTINEL', 'CKQUORUM', $self->{name}) !~ /^OK/ } $self->sentinels;
    }, 20);
    $self->fail_setup('the sentinels did not see the primary, the replicas and each other within 20 s') unless $ok;
}

sub fail_setup {
    my ($self, $why) = @_;
    $self->diag_logs;
    die "$why\n";
}

# Shows the end of every log of the set (for a failure): what each sentinel saw (+sdown, +odown,
# +switch-master, ...) and what each Redis did.
sub diag_logs {
    my ($self, $lines) = @_;
    $lines //= 30;
    my @who = ((map { ['redis', $_] } $self->servers), (map { ['sentinel', $_] } $self->sentinels));
    for (@who) {
        my ($kind, $r) = @$_;
        my @l = grep { !/WARNING Memory overcommit/ } split /\n/, $r->log_text;
        splice @l, 0, @l - $lines if @l > $lines;
        Test::More::diag("$kind :" . $r->port . ($r->running ? '' : ' (stopped)') . ", its log ends:\n" . join("\n", @l));
    }
}

sub DESTROY {
    my ($self) = @_;
    close $self->{refuser} if $self->{refuser};
}

package SSESentinel::Sentinel;

# One sentinel: redis-server <dir>/sentinel.conf --sentinel. The sentinel rewrites that file as
# it learns (its id, the replicas, the other sentinels); the whole dir goes at the end.
use parent -norequire, 'SSERedis';

sub command {
    my ($self) = @_;
    return ('redis-server', "$self->{dir}/sentinel.conf", '--sentinel');
}

sub write_conf {
    my ($self) = @_;
    my $d = $self->{dir};
    my ($name, $port, $quorum) = @{ $self->{master} };
    my $conf = <<"CONF";
bind 127.0.0.1
port $self->{port}
protected-mode no
daemonize no
dir $d
logfile $d/redis.log
loglevel notice
sentinel resolve-hostnames no
sentinel monitor $name 127.0.0.1 $port $quorum
sentinel down-after-milliseconds $name $self->{down_after}
sentinel failover-timeout $name $self->{failover_timeout}
sentinel parallel-syncs $name 1
CONF
    open my $fh, '>', "$d/sentinel.conf" or die "sentinel.conf: $!";
    print $fh $conf;
    close $fh;
}

1;
